// SPDX-License-Identifier: GPL-2.0
/* The generic accessor of a traced call's arguments came in 6.5. */
#include <linux/ftrace.h>

unsigned long probe(struct ftrace_regs *fregs);
unsigned long probe(struct ftrace_regs *fregs)
{
	return ftrace_regs_get_argument(fregs, 0);
}
