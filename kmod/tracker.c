// SPDX-License-Identifier: GPL-2.0
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/hash.h>
#include <linux/file.h>
#include <linux/rculist.h>
#include <linux/blk-mq.h>
#include "compat.h"
#include "tracker.h"
#include "cbt_map.h"
#include "diff_area.h"
#include "hook.h"
#include "snapimage.h"
#include "snapshot.h"

/*
 * Serializes the control operations (they are rare and may sleep): the
 * snapshots and each tracker's @snapshot. Device removal never takes it.
 */
DEFINE_MUTEX(ctl_mutex);

/*
 * Held only while a write looks its tracker up and enters the tracker's
 * own SRCU: removal waits for it before the tracker may go.
 */
DEFINE_STATIC_SRCU(tracker_srcu);

#define TRACKER_HASH_BITS 6
/*
 * Trackers by disk; written under tracker_table_lock, read under
 * tracker_srcu by writes and under the lock by control paths.
 */
static struct hlist_head tracker_table[1 << TRACKER_HASH_BITS];

/*
 * Disks whose removal has begun and not yet returned. With GD_DEAD, which
 * del_gendisk() sets before it returns, they tell attach which disks are
 * going: an attach either adds its tracker before the removal looks at the
 * bucket, so that the removal finds it, or fails.
 */
static DEFINE_SPINLOCK(tracker_table_lock); /* tracker_table, tracker_removing */
static LIST_HEAD(tracker_removing);

/* Inlined: tracker_wants() runs inside ftrace and must make no traced call. */
static __always_inline struct hlist_head *tracker_bucket(struct gendisk *disk)
{
	return &tracker_table[hash_ptr(disk, TRACKER_HASH_BITS)];
}

/*
 * The tracker a write belongs to: its device's own, the whole disk's for a
 * write through a partition, or a partition's for a write to the whole
 * disk that starts inside it. @pos is the write's first sector in the
 * tracked device.
 */
static struct tracker *tracker_lookup(struct bio *bio, sector_t *pos)
{
	struct block_device *bdev = bio->bi_bdev;
	sector_t abs = bio->bi_iter.bi_sector + bdev->bd_start_sect;
	struct tracker *tracker;

	hlist_for_each_entry_srcu(tracker, tracker_bucket(bdev->bd_disk), link,
				  srcu_read_lock_held(&tracker_srcu)) {
		struct block_device *tb = tracker->bdev;

		if (tb->bd_disk != bdev->bd_disk)
			continue;
		if (tb == bdev || !bdev_is_partition(tb) ||
		    (!bdev_is_partition(bdev) && abs >= tb->bd_start_sect &&
		     abs - tb->bd_start_sect < bdev_nr_sectors(tb))) {
			*pos = abs - tb->bd_start_sect;
			return tracker;
		}
	}
	return NULL;
}

/*
 * Returns true when the bio was taken over, false to submit it as is.
 * Under @tracker's SRCU.
 */
static bool tracker_write(struct tracker *tracker, struct bio *bio,
			  sector_t pos)
{
	struct diff_area *area;

	if (unlikely(READ_ONCE(tracker->frozen))) {
		unsigned long flags;
		bool held = false;

		spin_lock_irqsave(&tracker->lock, flags);
		if (tracker->frozen) {
			bio_list_add(&tracker->pending, bio);
			held = true;
		}
		spin_unlock_irqrestore(&tracker->lock, flags);
		if (held)
			return true;
	}
	cbt_map_mark(tracker->cbt_map, pos, bio_sectors(bio));
	area = srcu_dereference(tracker->diff_area, &tracker->srcu);
	return area && diff_area_write(area, bio, pos);
}

/*
 * Whether a bio must come to tracker_submit_bio(): a write to a disk that
 * has a tracker in its bucket. Called by ftrace for every bio, with
 * preemption off, so it only reads the bucket's head. A write that finds
 * it empty is not seen, like any write submitted before the attach.
 */
bool notrace tracker_wants(const void *arg)
{
	const struct bio *bio = arg;

	return op_is_write(bio_op(bio)) &&
	       !hlist_empty(tracker_bucket(bio->bi_bdev->bd_disk));
}

/*
 * In place of submit_bio_noacct(), for the bios tracker_wants() chose. The
 * submission, which may sleep (a tag, a frozen queue), happens outside
 * tracker_srcu: a write stuck on one device holds up nothing of another.
 * A split remainder of a partition's bio carries absolute sectors and was
 * seen whole before the split.
 */
void tracker_submit_bio(struct bio *bio)
{
	struct tracker *tracker;
	sector_t pos;
	int idx, tidx;

	if (!op_is_write(bio_op(bio)) || bio_flagged(bio, BIO_REMAPPED) ||
	    !bio_sectors(bio))
		goto pass;
	idx = srcu_read_lock(&tracker_srcu);
	tracker = tracker_lookup(bio, &pos);
	if (!tracker) {
		srcu_read_unlock(&tracker_srcu, idx);
		goto pass;
	}
	tidx = srcu_read_lock(&tracker->srcu);
	srcu_read_unlock(&tracker_srcu, idx);
	if (!tracker_write(tracker, bio, pos))
		hook_pass_bio(bio);
	srcu_read_unlock(&tracker->srcu, tidx);
	return;
pass:
	hook_pass_bio(bio);
}

static void tracker_work_fn(struct work_struct *work)
{
	struct tracker *tracker = container_of(work, struct tracker, work);
	struct bio_list bios;
	struct bio *bio;

	spin_lock_irq(&tracker->lock);
	if (tracker->frozen) {
		spin_unlock_irq(&tracker->lock);
		return;
	}
	bios = tracker->pending;
	bio_list_init(&tracker->pending);
	spin_unlock_irq(&tracker->lock);

	while ((bio = bio_list_pop(&bios)))
		tracker_submit_bio(bio);
}

static void tracker_release(struct kref *kref)
{
	struct tracker *tracker = container_of(kref, struct tracker, kref);

	flush_work(&tracker->work);
	WARN_ON_ONCE(!bio_list_empty(&tracker->pending));
	cleanup_srcu_struct(&tracker->srcu);
	cbt_map_free(tracker->cbt_map);
	fput(tracker->file);
	kfree(tracker);
}

void tracker_put(struct tracker *tracker)
{
	kref_put(&tracker->kref, tracker_release);
}

/* The tracker of @bdev, with a reference the caller puts, or NULL. */
struct tracker *tracker_find(struct block_device *bdev)
{
	struct tracker *tracker, *found = NULL;

	spin_lock(&tracker_table_lock);
	hlist_for_each_entry(tracker, tracker_bucket(bdev->bd_disk), link) {
		if (tracker->bdev == bdev) {
			found = tracker_get(tracker);
			break;
		}
	}
	spin_unlock(&tracker_table_lock);
	return found;
}

/* A whole disk and its partitions cannot be tracked at the same time. */
static int __tracker_check_overlap(struct block_device *bdev)
{
	struct tracker *tracker;

	lockdep_assert_held(&tracker_table_lock);
	hlist_for_each_entry(tracker, tracker_bucket(bdev->bd_disk), link) {
		if (tracker->bdev == bdev)
			return -EALREADY;
		if (tracker->bdev->bd_disk == bdev->bd_disk &&
		    (!bdev_is_partition(bdev) ||
		     !bdev_is_partition(tracker->bdev)))
			return -EBUSY;
	}
	return 0;
}

static bool __tracker_disk_removing(struct gendisk *disk)
{
	struct tracker_removal *r;

	lockdep_assert_held(&tracker_table_lock);
	if (test_bit(GD_DEAD, &disk->state))
		return true;
	list_for_each_entry(r, &tracker_removing, link)
		if (r->disk == disk)
			return true;
	return false;
}

/*
 * Adds @tracker to the lookup table, unless its device overlaps a tracked
 * one or its disk is being removed.
 */
static int tracker_publish(struct tracker *tracker)
{
	struct gendisk *disk = tracker->bdev->bd_disk;
	int ret = -ENODEV;

	spin_lock(&tracker_table_lock);
	if (!__tracker_disk_removing(disk)) {
		ret = __tracker_check_overlap(tracker->bdev);
		if (!ret)
			hlist_add_head_rcu(&tracker->link, tracker_bucket(disk));
	}
	spin_unlock(&tracker_table_lock);
	return ret;
}

/* Takes @tracker out of the table; false if a removal or detach did. */
static bool tracker_unpublish(struct tracker *tracker)
{
	bool ours;

	spin_lock(&tracker_table_lock);
	ours = !hlist_unhashed(&tracker->link);
	if (ours)
		hlist_del_init_rcu(&tracker->link);
	spin_unlock(&tracker_table_lock);
	return ours;
}

int tracker_attach(struct file *file)
{
	struct block_device *bdev = I_BDEV(file->f_mapping->host);
	struct tracker *tracker;
	int ret;

	lockdep_assert_held(&ctl_mutex);
	if (bdev_is_zoned(bdev))
		return -EOPNOTSUPP;
	if (snapimage_is_image(bdev))
		return -EINVAL;

	tracker = kzalloc(sizeof(*tracker), GFP_KERNEL);
	if (!tracker)
		return -ENOMEM;
	tracker->cbt_map = cbt_map_new(bdev_nr_sectors(bdev));
	if (IS_ERR(tracker->cbt_map)) {
		ret = PTR_ERR(tracker->cbt_map);
		goto fail_map;
	}
	ret = init_srcu_struct(&tracker->srcu);
	if (ret)
		goto fail_srcu;
	kref_init(&tracker->kref);
	spin_lock_init(&tracker->lock);
	INIT_HLIST_NODE(&tracker->link);
	bio_list_init(&tracker->pending);
	INIT_WORK(&tracker->work, tracker_work_fn);
	tracker->bdev = bdev;
	tracker->file = get_file(file);

	/* No write may be half seen: install the filter on a still device. */
	ret = blksnap_bdev_freeze(bdev);
	if (ret)
		goto fail_freeze;
	ret = tracker_publish(tracker);
	blksnap_bdev_thaw(bdev);
	if (ret)
		goto fail_freeze;

	__module_get(THIS_MODULE);
	pr_info("attached to %pg, %u-byte tracking blocks\n", bdev,
		cbt_map_block_size(tracker->cbt_map));
	return 0;

fail_freeze:
	fput(tracker->file);
	cleanup_srcu_struct(&tracker->srcu);
fail_srcu:
	cbt_map_free(tracker->cbt_map);
fail_map:
	kfree(tracker);
	return ret;
}

/* After tracker_unpublish(): no write finds it; the table's reference goes. */
static void tracker_retire(struct tracker *tracker)
{
	synchronize_srcu(&tracker_srcu);
	tracker_sync(tracker);
	/* Whatever a take left held is submitted before the tracker goes. */
	flush_work(&tracker->work);
	tracker_put(tracker);
	module_put(THIS_MODULE);
}

int tracker_detach(struct file *file)
{
	struct block_device *bdev = I_BDEV(file->f_mapping->host);
	struct tracker *tracker;
	int ret = 0;

	lockdep_assert_held(&ctl_mutex);
	tracker = tracker_find(bdev);
	if (!tracker)
		return -ENODEV;
	if (tracker->nr_snapshots)
		ret = -EBUSY;
	else if (!tracker_unpublish(tracker))
		ret = -ENODEV;
	if (!ret) {
		pr_info("detached from %pg\n", bdev);
		tracker_retire(tracker);
	}
	tracker_put(tracker);
	return ret;
}

/*
 * The device of @tracker is going: writes pass from now on, and the image
 * of a snapshot taken of it, now or by a take that publishes its state
 * after this, is corrupted.
 */
static void tracker_kill(struct tracker *tracker)
{
	struct diff_area *area;
	int idx;

	spin_lock_irq(&tracker->lock);
	tracker->dead = true;
	spin_unlock_irq(&tracker->lock);
	idx = srcu_read_lock(&tracker->srcu);
	area = srcu_dereference(tracker->diff_area, &tracker->srcu);
	if (area)
		diff_area_corrupt(area, -ENODEV);
	srcu_read_unlock(&tracker->srcu, idx);
}

/* Takes a tracker of @disk out of the table and returns it, or NULL. */
static struct tracker *tracker_unpublish_disk(struct gendisk *disk)
{
	struct tracker *tracker, *found = NULL;

	spin_lock(&tracker_table_lock);
	hlist_for_each_entry(tracker, tracker_bucket(disk), link) {
		if (tracker->bdev->bd_disk == disk) {
			hlist_del_init_rcu(&tracker->link);
			found = tracker;
			break;
		}
	}
	spin_unlock(&tracker_table_lock);
	return found;
}

/*
 * Called before del_gendisk(), with @r to pass to tracker_disk_gone()
 * once it returned: forget the disk before it goes. Only the disk's own
 * trackers are waited for, never a control operation: a take draining a
 * slow device holds up no removal of another.
 */
void tracker_disk_removed(struct gendisk *disk, struct tracker_removal *r)
{
	struct tracker *tracker;

	r->disk = disk;
	spin_lock(&tracker_table_lock);
	list_add(&r->link, &tracker_removing);
	spin_unlock(&tracker_table_lock);
	while ((tracker = tracker_unpublish_disk(disk))) {
		pr_warn("%pg is being removed while attached; detaching\n",
			tracker->bdev);
		tracker_kill(tracker);
		tracker_retire(tracker);
	}
}

void tracker_disk_gone(struct tracker_removal *r)
{
	spin_lock(&tracker_table_lock);
	list_del(&r->link);
	spin_unlock(&tracker_table_lock);
}

void tracker_freeze(struct tracker *tracker)
{
	spin_lock_irq(&tracker->lock);
	tracker->frozen = true;
	spin_unlock_irq(&tracker->lock);
}

void tracker_unfreeze(struct tracker *tracker)
{
	spin_lock_irq(&tracker->lock);
	tracker->frozen = false;
	spin_unlock_irq(&tracker->lock);
	queue_work(blksnap_wq, &tracker->work);
}

/*
 * Publishes @area (or none) for the device's writes. Returns -ENODEV when
 * the device is being removed: its removal may have looked for an area
 * before this one was published, so the caller corrupts it.
 */
int tracker_set_diff_area(struct tracker *tracker, struct diff_area *area)
{
	bool dead;

	lockdep_assert_held(&ctl_mutex);
	spin_lock_irq(&tracker->lock);
	rcu_assign_pointer(tracker->diff_area, area);
	dead = tracker->dead;
	spin_unlock_irq(&tracker->lock);
	return dead ? -ENODEV : 0;
}

/* The area the device's writes see now; under ctl_mutex. */
struct diff_area *tracker_diff_area(struct tracker *tracker)
{
	return rcu_dereference_protected(tracker->diff_area,
					 lockdep_is_held(&ctl_mutex));
}

bool tracker_dead(struct tracker *tracker)
{
	bool dead;

	spin_lock_irq(&tracker->lock);
	dead = tracker->dead;
	spin_unlock_irq(&tracker->lock);
	return dead;
}

/*
 * Waits until no write to @tracker's device is between its filtering and
 * the return of its submission, by which time a bio submitted from the
 * top level, and anything a stacked driver queued below it, has entered
 * its queue.
 */
void tracker_sync(struct tracker *tracker)
{
	synchronize_srcu_expedited(&tracker->srcu);
}
