// SPDX-License-Identifier: GPL-2.0
/*
 * Stock kernels have no block-layer filter, so two kernel functions are
 * diverted to the module with ftrace, the way livepatch replaces a
 * function: submit_bio_noacct(), which every bio passes through, and
 * del_gendisk(), so that a device removed while attached is detached
 * before it goes. Calls made from the module itself reach the originals.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt
#include <linux/module.h>
#include <linux/ftrace.h>
#include <linux/srcu.h>
#include <linux/rcupdate.h>
#include "compat.h"
#include "hook.h"
#include "tracker.h"

/*
 * Every task running a diverted call holds this, even while it sleeps in
 * the original (a submission waiting for a tag, del_gendisk()): module
 * exit waits for them to leave its text. Nothing else waits for it.
 */
DEFINE_STATIC_SRCU(hook_srcu);

/*
 * The original is called from below this frame, never as a tail call of
 * the target entered through ftrace, so the parent_ip of that call is in
 * the module whatever the compiler makes of tracker_submit_bio().
 */
static void hook_submit_bio(struct bio *bio)
{
	int idx = srcu_read_lock(&hook_srcu);

	tracker_submit_bio(bio);
	srcu_read_unlock(&hook_srcu, idx);
}

static void hook_del_gendisk(struct gendisk *disk)
{
	int idx = srcu_read_lock(&hook_srcu);
	struct tracker_removal r;

	tracker_disk_removed(disk, &r);
	del_gendisk(disk);
	tracker_disk_gone(&r);
	srcu_read_unlock(&hook_srcu, idx);
}

/**
 * struct hook - One diverted kernel function.
 * @name: the function's symbol.
 * @target: the module's replacement, with the same signature.
 * @wants: if set, whether a call, by its first argument, must go to
 *	@target; called with preemption off, it must not sleep.
 * @ops: the ftrace registration.
 * @registered: @ops is live.
 */
struct hook {
	const char *name;
	unsigned long target;
	bool (*wants)(const void *arg);
	struct ftrace_ops ops;
	bool registered;
};

#ifdef BLKSNAP_HAVE_FTRACE_IPMODIFY
static void notrace hook_redirect(unsigned long ip, unsigned long parent_ip,
				  struct ftrace_ops *ops,
				  struct ftrace_regs *fregs)
{
	struct hook *hook = container_of(ops, struct hook, ops);

	if (within_module(parent_ip, THIS_MODULE))
		return;
#ifdef BLKSNAP_HAVE_FTRACE_ARG0
	/*
	 * Deciding here spares the calls that need nothing (reads, writes to
	 * untracked disks) a second pass through ftrace when the replacement
	 * calls the original.
	 */
	if (hook->wants && !hook->wants((const void *)blksnap_ftrace_arg0(fregs)))
		return;
#endif
	blksnap_ftrace_set_ip(fregs, hook->target);
}

static struct hook hooks[] = {
	{
		.name = "submit_bio_noacct",
		.target = (unsigned long)hook_submit_bio,
		.wants = tracker_wants,
	},
	{
		.name = "del_gendisk",
		.target = (unsigned long)hook_del_gendisk,
	},
};

static int hook_register(struct hook *hook)
{
	int ret;

	hook->ops.func = hook_redirect;
	hook->ops.flags = BLKSNAP_FTRACE_FLAGS;
	ret = ftrace_set_filter(&hook->ops, (unsigned char *)hook->name,
				strlen(hook->name), 0);
	if (ret) {
		pr_err("cannot trace %s: %d\n", hook->name, ret);
		return ret;
	}
	ret = register_ftrace_function(&hook->ops);
	if (ret) {
		pr_err("cannot divert %s: %d\n", hook->name, ret);
		ftrace_free_filter(&hook->ops);
		return ret;
	}
	hook->registered = true;
	return 0;
}

void hook_done(void)
{
	int i;

	for (i = ARRAY_SIZE(hooks) - 1; i >= 0; i--) {
		if (!hooks[i].registered)
			continue;
		unregister_ftrace_function(&hooks[i].ops);
		ftrace_free_filter(&hooks[i].ops);
		hooks[i].registered = false;
	}
	/* Tasks inside a diverted call, possibly asleep in the original. */
	synchronize_srcu(&hook_srcu);
	/* Tasks preempted between srcu_read_unlock() and their return. */
	synchronize_rcu_tasks();
}

int hook_init(void)
{
	int i, ret;

	for (i = 0; i < ARRAY_SIZE(hooks); i++) {
		ret = hook_register(&hooks[i]);
		if (ret) {
			hook_done();
			return ret;
		}
	}
	return 0;
}
#else
int hook_init(void)
{
	pr_err("this kernel lacks CONFIG_DYNAMIC_FTRACE_WITH_ARGS or _WITH_REGS, which the module needs to intercept I/O\n");
	return -EOPNOTSUPP;
}

void hook_done(void)
{
}
#endif
