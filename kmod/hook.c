// SPDX-License-Identifier: GPL-2.0
/*
 * Stock kernels have no block-layer filter, so two kernel functions are
 * diverted to the module with ftrace, the way livepatch replaces a
 * function: submit_bio_noacct(), which every bio passes through, and
 * del_gendisk(), so that a device removed while attached is detached
 * before it goes. Calls made from the module itself reach the originals:
 * its bios carry a mark for one submission (hook_pass_bio()), and its
 * calls of del_gendisk() come from its own text.
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
 * Set in bi_flags by hook_pass_bio() and cleared by the hook at the entry
 * of the submission it marks, so a bio is let through once, not for the
 * rest of its life (a stacked driver may send the same bio on to a
 * tracked device). The block layer's own flags are those below
 * BIO_FLAG_LAST.
 */
#define HOOK_BIO_PASS BIO_FLAG_LAST
static_assert(sizeof_field(struct bio, bi_flags) * BITS_PER_BYTE > HOOK_BIO_PASS);

/*
 * Submits a bio of the module's own (a copy-on-write read or store, an
 * image clone) or one it is done with to the original
 * submit_bio_noacct(). A mark on the bio, not the caller's address: a
 * tail call would leave the module's caller, perhaps the block layer, as
 * the submission's parent.
 */
void hook_pass_bio(struct bio *bio)
{
	bio_set_flag(bio, HOOK_BIO_PASS);
	submit_bio_noacct(bio);
}

/* For the submit hook: whether a bio is marked (and then unmark it) or wanted. */
static bool notrace hook_bio_wanted(const void *arg)
{
	struct bio *bio = (struct bio *)arg;

	if (unlikely(bio_flagged(bio, HOOK_BIO_PASS))) {
		bio_clear_flag(bio, HOOK_BIO_PASS);
		return false;
	}
	return tracker_wants(bio);
}

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
 *	@target; called with preemption off, it must not sleep. Without it,
 *	every call not made from the module goes to @target.
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

#if defined(BLKSNAP_HAVE_FTRACE_IPMODIFY) && defined(BLKSNAP_HAVE_FTRACE_ARG0)
static void notrace hook_redirect(unsigned long ip, unsigned long parent_ip,
				  struct ftrace_ops *ops,
				  struct ftrace_regs *fregs)
{
	struct hook *hook = container_of(ops, struct hook, ops);

	/*
	 * Deciding here spares the calls that need nothing (reads, writes to
	 * untracked disks) a second pass through ftrace.
	 */
	if (hook->wants) {
		if (!hook->wants((const void *)blksnap_ftrace_arg0(fregs)))
			return;
	} else if (within_module(parent_ip, THIS_MODULE)) {
		return;
	}
	blksnap_ftrace_set_ip(fregs, hook->target);
}

static struct hook hooks[] = {
	{
		.name = "submit_bio_noacct",
		.target = (unsigned long)hook_submit_bio,
		.wants = hook_bio_wanted,
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
	pr_err("this kernel lacks CONFIG_DYNAMIC_FTRACE_WITH_ARGS or _WITH_REGS, or a way to read a traced call's arguments, which the module needs to intercept I/O\n");
	return -EOPNOTSUPP;
}

void hook_done(void)
{
}
#endif
