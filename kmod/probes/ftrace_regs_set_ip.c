// SPDX-License-Identifier: GPL-2.0
/* The accessor that moves a traced call elsewhere was renamed in 6.7. */
#include <linux/ftrace.h>

void probe(struct ftrace_regs *fregs, unsigned long ip);
void probe(struct ftrace_regs *fregs, unsigned long ip)
{
	ftrace_regs_set_instruction_pointer(fregs, ip);
}
