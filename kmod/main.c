// SPDX-License-Identifier: GPL-2.0
/*
 * blksnap: snapshots and changed block tracking for block devices, on
 * stock kernels.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt
#include <linux/module.h>
#include <linux/miscdevice.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/build_bug.h>
#include <linux/capability.h>
#include <linux/blkdev.h>
#include <linux/stringify.h>
#include "include/uapi/linux/blksnap.h"
#include "params.h"
#include "cbt_map.h"
#include "diff_area.h"
#include "event_queue.h"
#include "hook.h"
#include "snapimage.h"
#include "snapshot.h"
#include "tracker.h"

/* The ABI as the UAPI header describes it, on every architecture. */
static_assert(sizeof(struct blksnap_uuid) == 16);
static_assert(sizeof(struct blksnap_cbtinfo) == 40);
static_assert(sizeof(struct blksnap_cbtmap) == 16);
static_assert(sizeof(struct blksnap_sectors) == 16);
static_assert(sizeof(struct blksnap_cbtdirty) == 16);
static_assert(sizeof(struct blksnap_snapshotadd) == 16);
static_assert(sizeof(struct blksnap_snapshotinfo) == 36);
static_assert(sizeof(struct blksnap_snapshotinfo_of) == 72);
static_assert(sizeof(struct blksnap_version) == 8);
static_assert(sizeof(struct blksnap_snapshot_create) == 32);
static_assert(sizeof(struct blksnap_snapshot_collect) == 16);
static_assert(sizeof(struct blksnap_snapshot_event) == 4096);
static_assert(sizeof(struct blksnap_event_corrupted) == 12);
static_assert(sizeof(struct blksnap_event_low_space) == 16);
static_assert(sizeof(struct blksnap_bdev) == 8);
static_assert(sizeof(struct blksnap_ctl) == 24);

unsigned int tracking_block_minimum_shift = 16;
unsigned int tracking_block_maximum_shift = 26;
unsigned int tracking_block_maximum_count = 2097152;
unsigned int chunk_minimum_shift = 18;
unsigned int chunk_maximum_shift = 26;
unsigned int chunk_maximum_count_shift = 40;
unsigned int chunk_maximum_in_queue = 16;
unsigned int free_diff_buffer_pool_size = 128;
unsigned long diff_storage_minimum = 2097152;
unsigned int snapshots_per_device_maximum = 16;

module_param(tracking_block_minimum_shift, uint, 0444);
MODULE_PARM_DESC(tracking_block_minimum_shift,
		 "log2 of the smallest change tracking block, in bytes (12..30, default 16)");
module_param(tracking_block_maximum_shift, uint, 0444);
MODULE_PARM_DESC(tracking_block_maximum_shift,
		 "log2 of the largest change tracking block, in bytes (default 26)");
module_param(tracking_block_maximum_count, uint, 0444);
MODULE_PARM_DESC(tracking_block_maximum_count,
		 "number of change tracking blocks a device gets before blocks grow (default 2097152)");
module_param(chunk_minimum_shift, uint, 0444);
MODULE_PARM_DESC(chunk_minimum_shift,
		 "log2 of the smallest copy-on-write chunk, in bytes (default 18)");
module_param(chunk_maximum_shift, uint, 0444);
MODULE_PARM_DESC(chunk_maximum_shift,
		 "log2 of the largest copy-on-write chunk, in bytes (default 26)");
module_param(chunk_maximum_count_shift, uint, 0444);
MODULE_PARM_DESC(chunk_maximum_count_shift,
		 "log2 of the number of chunks a device gets before chunks grow (default 40)");
module_param(chunk_maximum_in_queue, uint, 0444);
MODULE_PARM_DESC(chunk_maximum_in_queue,
		 "most chunks written to the difference storage in one write (default 16)");
module_param(free_diff_buffer_pool_size, uint, 0444);
MODULE_PARM_DESC(free_diff_buffer_pool_size,
		 "most chunk buffers a device holds, and keeps for reuse (default 128)");
module_param(diff_storage_minimum, ulong, 0444);
MODULE_PARM_DESC(diff_storage_minimum,
		 "sectors a file difference storage grows by (default 2097152)");
module_param(snapshots_per_device_maximum, uint, 0444);
MODULE_PARM_DESC(snapshots_per_device_maximum,
		 "most snapshots a device can be in at once (default 16)");

struct workqueue_struct *blksnap_wq;
struct workqueue_struct *blksnap_store_wq;

static unsigned long clamp_param(const char *name, unsigned long value,
				 unsigned long lo, unsigned long hi)
{
	unsigned long fixed = clamp(value, lo, hi);

	if (fixed != value)
		pr_warn("%s=%lu is out of range [%lu, %lu]; using %lu\n", name,
			value, lo, hi, fixed);
	return fixed;
}

static void params_check(void)
{
	tracking_block_minimum_shift =
		clamp_param("tracking_block_minimum_shift",
			    tracking_block_minimum_shift, 12, 30);
	tracking_block_maximum_shift =
		clamp_param("tracking_block_maximum_shift",
			    tracking_block_maximum_shift,
			    tracking_block_minimum_shift, 30);
	tracking_block_maximum_count =
		clamp_param("tracking_block_maximum_count",
			    tracking_block_maximum_count, 1024, 1U << 30);
	chunk_minimum_shift = clamp_param("chunk_minimum_shift",
					  chunk_minimum_shift, PAGE_SHIFT, 26);
	chunk_maximum_shift = clamp_param("chunk_maximum_shift",
					  chunk_maximum_shift,
					  chunk_minimum_shift, 26);
	chunk_maximum_count_shift = clamp_param("chunk_maximum_count_shift",
						chunk_maximum_count_shift,
						8, 40);
	chunk_maximum_in_queue = clamp_param("chunk_maximum_in_queue",
					     chunk_maximum_in_queue, 1, 256);
	free_diff_buffer_pool_size =
		clamp_param("free_diff_buffer_pool_size",
			    free_diff_buffer_pool_size, 4, 65536);
	diff_storage_minimum = clamp_param("diff_storage_minimum",
					   diff_storage_minimum, 2048,
					   1UL << 40);
	snapshots_per_device_maximum =
		clamp_param("snapshots_per_device_maximum",
			    snapshots_per_device_maximum, 1, 1024);
}

/* The block device behind a descriptor, with its file held in @file. */
static struct block_device *bdev_from_fd(unsigned int fd, struct file **file)
{
	struct file *f = fget(fd);

	if (!f)
		return ERR_PTR(-EBADF);
	if (!S_ISBLK(file_inode(f)->i_mode)) {
		fput(f);
		return ERR_PTR(-ENOTBLK);
	}
	*file = f;
	return I_BDEV(f->f_mapping->host);
}

static int ioctl_version(struct blksnap_version __user *arg)
{
	static const struct blksnap_version version = {
		.major = BLKSNAP_VERSION_MAJOR,
		.minor = BLKSNAP_VERSION_MINOR,
	};

	return copy_to_user(arg, &version, sizeof(version)) ? -EFAULT : 0;
}

static int ioctl_snapshot_create(struct blksnap_snapshot_create __user *uarg)
{
	struct blksnap_snapshot_create arg;
	uuid_t id;
	int ret;

	if (copy_from_user(&arg, uarg, sizeof(arg)))
		return -EFAULT;
	mutex_lock(&ctl_mutex);
	ret = snapshot_create(arg.diff_storage_fd,
			      arg.diff_storage_limit_sect, &id);
	mutex_unlock(&ctl_mutex);
	if (ret)
		return ret;
	memcpy(arg.id.b, &id, sizeof(arg.id.b));
	if (copy_to_user(uarg, &arg, sizeof(arg))) {
		mutex_lock(&ctl_mutex);
		snapshot_destroy(&id);
		mutex_unlock(&ctl_mutex);
		return -EFAULT;
	}
	return 0;
}

static int get_uuid(uuid_t *id, struct blksnap_uuid __user *arg)
{
	struct blksnap_uuid uid;

	if (copy_from_user(&uid, arg, sizeof(uid)))
		return -EFAULT;
	import_uuid(id, uid.b);
	return 0;
}

static int ioctl_snapshot_destroy(struct blksnap_uuid __user *arg)
{
	uuid_t id;
	int ret;

	ret = get_uuid(&id, arg);
	if (ret)
		return ret;
	mutex_lock(&ctl_mutex);
	ret = snapshot_destroy(&id);
	mutex_unlock(&ctl_mutex);
	return ret;
}

static int ioctl_snapshot_take(struct blksnap_uuid __user *arg)
{
	uuid_t id;
	int ret;

	ret = get_uuid(&id, arg);
	if (ret)
		return ret;
	mutex_lock(&ctl_mutex);
	ret = snapshot_take(&id);
	mutex_unlock(&ctl_mutex);
	return ret;
}

/*
 * Answers with every id, or with -ENODATA and the number of snapshots when
 * the room given is too small (or @ids is NULL). The ids are gathered under
 * the mutex into a buffer sized for the count then, and copied out after.
 */
static int ioctl_snapshot_collect(struct blksnap_snapshot_collect __user *uarg)
{
	struct blksnap_snapshot_collect arg;
	unsigned int count;
	uuid_t *ids = NULL;
	int ret;

	if (copy_from_user(&arg, uarg, sizeof(arg)))
		return -EFAULT;
	mutex_lock(&ctl_mutex);
	count = snapshot_count();
	if (count && arg.ids && arg.count >= count) {
		ids = kvmalloc_array(count, sizeof(*ids), GFP_KERNEL);
		if (!ids) {
			mutex_unlock(&ctl_mutex);
			return -ENOMEM;
		}
		snapshot_collect(ids, count);
		ret = 0;
	} else {
		ret = count ? -ENODATA : 0;
	}
	mutex_unlock(&ctl_mutex);
	if (put_user(count, &uarg->count))
		ret = -EFAULT;
	else if (ids && copy_to_user(u64_to_user_ptr(arg.ids), ids,
				     array_size(count, sizeof(*ids))))
		ret = -EFAULT;
	kvfree(ids);
	return ret;
}

static int ioctl_snapshot_wait_event(struct blksnap_snapshot_event __user *uarg)
{
	struct blksnap_snapshot_event *arg;
	struct event_queue *queue;
	struct event *event;
	uuid_t id;
	int ret;

	arg = kzalloc(sizeof(*arg), GFP_KERNEL);
	if (!arg)
		return -ENOMEM;
	ret = -EFAULT;
	if (copy_from_user(arg, uarg, offsetof(typeof(*arg), code)))
		goto out;
	import_uuid(&id, arg->id.b);

	mutex_lock(&ctl_mutex);
	queue = snapshot_get_events(&id);
	mutex_unlock(&ctl_mutex);
	ret = -ENOENT;
	if (!queue)
		goto out;
	event = event_queue_wait(queue, arg->timeout_ms);
	event_queue_put(queue);
	if (IS_ERR(event)) {
		ret = PTR_ERR(event);
		goto out;
	}
	arg->code = event->code;
	arg->time_label = event->time;
	memcpy(arg->data, event->data, min_t(size_t, event->size,
					     sizeof(arg->data)));
	kfree(event);
	ret = copy_to_user(uarg, arg, sizeof(*arg)) ? -EFAULT : 0;
out:
	kfree(arg);
	return ret;
}

/* Attach and detach: @op, under ctl_mutex, on the device @uarg names. */
static int ioctl_bdev(struct blksnap_bdev __user *uarg,
		      int (*op)(struct file *file))
{
	struct blksnap_bdev arg;
	struct block_device *bdev;
	struct file *file;
	int ret;

	if (copy_from_user(&arg, uarg, sizeof(arg)))
		return -EFAULT;
	if (arg.flags)
		return -EINVAL;
	bdev = bdev_from_fd(arg.fd, &file);
	if (IS_ERR(bdev))
		return PTR_ERR(bdev);
	mutex_lock(&ctl_mutex);
	ret = op(file);
	mutex_unlock(&ctl_mutex);
	fput(file);
	return ret;
}

/**
 * struct ctl_req - A ctl command's data, in kernel memory.
 * @opt: the command's structure.
 * @ranges: the ranges of a cbtdirty.
 * @map: the window a cbtmap copies out; NULL for zeros.
 * @count: its size.
 *
 * User memory is read before ctl_mutex is taken and written after it is
 * released: a slow or faulting user buffer holds up no other control
 * command, nor the removal of a disk, which takes the mutex.
 */
struct ctl_req {
	union {
		struct blksnap_cbtinfo cbtinfo;
		struct blksnap_cbtmap cbtmap;
		struct blksnap_cbtdirty cbtdirty;
		struct blksnap_snapshotadd snapshotadd;
		struct blksnap_snapshotinfo snapshotinfo;
		struct blksnap_snapshotinfo_of snapshotinfo_of;
	} opt;
	struct blksnap_sectors *ranges;
	u8 *map;
	long count;
};

static size_t ctl_optlen(u32 cmd)
{
	switch (cmd) {
	case blkfilter_ctl_blksnap_cbtinfo:
		return sizeof(struct blksnap_cbtinfo);
	case blkfilter_ctl_blksnap_cbtmap:
		return sizeof(struct blksnap_cbtmap);
	case blkfilter_ctl_blksnap_cbtdirty:
		return sizeof(struct blksnap_cbtdirty);
	case blkfilter_ctl_blksnap_snapshotadd:
		return sizeof(struct blksnap_snapshotadd);
	case blkfilter_ctl_blksnap_snapshotinfo:
		return sizeof(struct blksnap_snapshotinfo);
	case blkfilter_ctl_blksnap_snapshotinfo_of:
		return sizeof(struct blksnap_snapshotinfo_of);
	default:
		return 0;
	}
}

/* Before ctl_mutex: what the command reads from user space. */
static int ctl_in(u32 cmd, struct ctl_req *req, void __user *opt)
{
	struct blksnap_cbtdirty *dirty = &req->opt.cbtdirty;

	switch (cmd) {
	case blkfilter_ctl_blksnap_cbtmap:
	case blkfilter_ctl_blksnap_snapshotadd:
	case blkfilter_ctl_blksnap_snapshotinfo_of:
		return copy_from_user(&req->opt, opt, ctl_optlen(cmd)) ?
		       -EFAULT : 0;
	case blkfilter_ctl_blksnap_cbtdirty:
		if (copy_from_user(dirty, opt, sizeof(*dirty)))
			return -EFAULT;
		if (!dirty->count || dirty->count > BLKSNAP_CBTDIRTY_MAX_COUNT)
			return -EINVAL;
		req->ranges = memdup_user(u64_to_user_ptr(dirty->dirty_sectors),
					  array_size(dirty->count,
						     sizeof(*req->ranges)));
		if (IS_ERR(req->ranges)) {
			int ret = PTR_ERR(req->ranges);

			req->ranges = NULL;
			return ret;
		}
		return 0;
	default:
		return 0;
	}
}

static int ctl_cbtdirty(struct tracker *tracker, struct ctl_req *req)
{
	struct cbt_map *map = tracker->cbt_map;
	struct blksnap_sectors *ranges = req->ranges;
	unsigned int i, count = req->opt.cbtdirty.count;

	/* All or nothing: check every range before marking any. */
	for (i = 0; i < count; i++)
		if (!ranges[i].count || ranges[i].offset >= map->capacity ||
		    ranges[i].count > map->capacity - ranges[i].offset)
			return -EINVAL;
	for (i = 0; i < count; i++)
		cbt_map_mark_both(map, ranges[i].offset, ranges[i].count);
	return 0;
}

/* Under ctl_mutex, on kernel memory only. */
static int ctl_run(u32 cmd, struct tracker *tracker, struct ctl_req *req)
{
	uuid_t id;

	switch (cmd) {
	case blkfilter_ctl_blksnap_cbtinfo:
		cbt_map_info(tracker->cbt_map, &req->opt.cbtinfo);
		return 0;
	case blkfilter_ctl_blksnap_cbtmap:
		req->count = cbt_map_read(tracker->cbt_map,
					  req->opt.cbtmap.offset,
					  req->opt.cbtmap.length, &req->map);
		return req->count < 0 ? req->count : 0;
	case blkfilter_ctl_blksnap_cbtdirty:
		return ctl_cbtdirty(tracker, req);
	case blkfilter_ctl_blksnap_snapshotadd:
		import_uuid(&id, req->opt.snapshotadd.id.b);
		return snapshot_add(&id, tracker);
	case blkfilter_ctl_blksnap_snapshotinfo:
		snapshot_info(tracker, &req->opt.snapshotinfo);
		return 0;
	case blkfilter_ctl_blksnap_snapshotinfo_of:
		import_uuid(&id, req->opt.snapshotinfo_of.id.b);
		return snapshot_info_of(&id, tracker, &req->opt.snapshotinfo_of);
	default:
		return -ENOTTY;
	}
}

/* After ctl_mutex: what the command writes back; its result. */
static long ctl_out(u32 cmd, struct ctl_req *req, void __user *opt)
{
	u8 __user *buf;

	switch (cmd) {
	case blkfilter_ctl_blksnap_cbtinfo:
	case blkfilter_ctl_blksnap_snapshotinfo:
	case blkfilter_ctl_blksnap_snapshotinfo_of:
		return copy_to_user(opt, &req->opt, ctl_optlen(cmd)) ?
		       -EFAULT : 0;
	case blkfilter_ctl_blksnap_cbtmap:
		buf = u64_to_user_ptr(req->opt.cbtmap.buffer);
		if (req->map ? copy_to_user(buf, req->map, req->count) :
			       clear_user(buf, req->count))
			return -EFAULT;
		return req->count;
	default:
		return 0;
	}
}

static long ioctl_ctl(struct blksnap_ctl __user *uarg)
{
	struct block_device *bdev;
	struct blksnap_ctl arg;
	struct tracker *tracker;
	struct ctl_req *req;
	void __user *opt;
	struct file *file;
	size_t optlen;
	long ret;

	if (copy_from_user(&arg, uarg, sizeof(arg)))
		return -EFAULT;
	if (arg.reserved)
		return -EINVAL;
	optlen = ctl_optlen(arg.cmd);
	if (!optlen)
		return -ENOTTY;
	if (arg.optlen < optlen) {
		if (put_user(optlen, &uarg->optlen))
			return -EFAULT;
		return -ENOSPC;
	}
	opt = u64_to_user_ptr(arg.opt);
	bdev = bdev_from_fd(arg.fd, &file);
	if (IS_ERR(bdev))
		return PTR_ERR(bdev);
	/* Zeroed: the structures end in padding, no bytes may leak. */
	req = kzalloc(sizeof(*req), GFP_KERNEL);
	ret = -ENOMEM;
	if (!req)
		goto fail_req;
	ret = ctl_in(arg.cmd, req, opt);
	if (ret)
		goto out;

	tracker = tracker_find(bdev);
	ret = -ENODEV;
	if (tracker) {
		mutex_lock(&ctl_mutex);
		ret = ctl_run(arg.cmd, tracker, req);
		mutex_unlock(&ctl_mutex);
		tracker_put(tracker);
	}
	if (!ret)
		ret = ctl_out(arg.cmd, req, opt);
out:
	kvfree(req->map);
	kfree(req->ranges);
	kfree(req);
fail_req:
	fput(file);
	return ret;
}

static long ctl_ioctl(struct file *filp, unsigned int cmd, unsigned long arg)
{
	void __user *argp = (void __user *)arg;

	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	switch (cmd) {
	case IOCTL_BLKSNAP_VERSION:
		return ioctl_version(argp);
	case IOCTL_BLKSNAP_SNAPSHOT_CREATE:
		return ioctl_snapshot_create(argp);
	case IOCTL_BLKSNAP_SNAPSHOT_DESTROY:
		return ioctl_snapshot_destroy(argp);
	case IOCTL_BLKSNAP_SNAPSHOT_TAKE:
		return ioctl_snapshot_take(argp);
	case IOCTL_BLKSNAP_SNAPSHOT_COLLECT:
		return ioctl_snapshot_collect(argp);
	case IOCTL_BLKSNAP_SNAPSHOT_WAIT_EVENT:
		return ioctl_snapshot_wait_event(argp);
	case IOCTL_BLKSNAP_ATTACH:
		return ioctl_bdev(argp, tracker_attach);
	case IOCTL_BLKSNAP_DETACH:
		return ioctl_bdev(argp, tracker_detach);
	case IOCTL_BLKSNAP_CTL:
		return ioctl_ctl(argp);
	default:
		return -ENOTTY;
	}
}

static const struct file_operations ctl_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = ctl_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
};

static struct miscdevice ctl_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = BLKSNAP_CTL,
	.fops = &ctl_fops,
	.mode = 0600,
};

static int __init blksnap_init(void)
{
	int ret;

	params_check();
	blksnap_wq = alloc_workqueue("blksnap", WQ_UNBOUND | WQ_MEM_RECLAIM,
				     0);
	if (!blksnap_wq)
		return -ENOMEM;
	ret = -ENOMEM;
	blksnap_store_wq = alloc_workqueue("blksnap_store",
					   WQ_UNBOUND | WQ_MEM_RECLAIM, 0);
	if (!blksnap_store_wq)
		goto fail_store_wq;
	ret = diff_area_init();
	if (ret)
		goto fail_bs;
	ret = hook_init();
	if (ret)
		goto fail_hook;
	ret = misc_register(&ctl_misc);
	if (ret)
		goto fail_misc;
	pr_info("version %d.%d loaded\n", BLKSNAP_VERSION_MAJOR,
		BLKSNAP_VERSION_MINOR);
	return 0;

fail_misc:
	hook_done();
fail_hook:
	diff_area_done();
fail_bs:
	destroy_workqueue(blksnap_store_wq);
fail_store_wq:
	destroy_workqueue(blksnap_wq);
	return ret;
}

/* Only reached with nothing attached and no snapshot: each holds the module. */
static void __exit blksnap_exit(void)
{
	misc_deregister(&ctl_misc);
	hook_done();
	diff_area_done();
	destroy_workqueue(blksnap_store_wq);
	destroy_workqueue(blksnap_wq);
	snapimage_done();
	pr_info("unloaded\n");
}

module_init(blksnap_init);
module_exit(blksnap_exit);

MODULE_DESCRIPTION("Block device snapshots and changed block tracking");
/* The interface version, as the version ioctl reports it. */
MODULE_VERSION(__stringify(BLKSNAP_VERSION_MAJOR) "." __stringify(BLKSNAP_VERSION_MINOR));
MODULE_AUTHOR("blksnap-csi developers");
MODULE_LICENSE("GPL");
