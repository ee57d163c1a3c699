/* SPDX-License-Identifier: GPL-2.0 */
#ifndef __BLKSNAP_TRACKER_H
#define __BLKSNAP_TRACKER_H

#include <linux/blkdev.h>
#include <linux/kref.h>
#include <linux/list.h>
#include <linux/spinlock.h>
#include <linux/srcu.h>
#include <linux/workqueue.h>

struct cbt_map;
struct diff_area;

/**
 * struct tracker - A block device the module is attached to.
 * @link: entry in the lookup table; added and removed under
 *	tracker_table_lock, read under tracker_srcu or that lock; unhashed
 *	once a detach or the device's removal took the tracker out.
 * @srcu: held by every write the filter passes to the device, from its
 *	filtering until its submission returned (a submission may sleep):
 *	a take, a snapshot's release and the removal wait for the writes of
 *	their own devices only, never for those of another device.
 * @kref: the lookup table and a snapshot that holds the device each own
 *	a reference.
 * @file: the caller's open file of the device, which pins it.
 * @bdev: the device.
 * @cbt_map: the change map.
 * @diff_area: copy-on-write state while snapshots of the device are
 *	taken; written under ctl_mutex and @lock, read under @srcu.
 * @nr_snapshots: the snapshots the device was added to, under ctl_mutex.
 * @dead: the device is being removed, under @lock.
 * @lock: guards @dead, @frozen and @pending, and orders the publication
 *	of @diff_area against @dead.
 * @frozen: a take is switching the device; writes are held in @pending.
 * @pending: writes held while frozen, resubmitted in order by @work.
 * @work: resubmits @pending once the take is over.
 */
struct tracker {
	struct hlist_node link;
	struct srcu_struct srcu; /* writes in flight: diff_area, frozen */
	struct kref kref;
	struct file *file;
	struct block_device *bdev;
	struct cbt_map *cbt_map;
	struct diff_area __rcu *diff_area;
	unsigned int nr_snapshots;
	bool dead;
	spinlock_t lock; /* dead, frozen, pending */
	bool frozen;
	struct bio_list pending;
	struct work_struct work;
};

extern struct mutex ctl_mutex;
/*
 * Two queues, each with its own rescuer: blksnap_wq runs the work that may
 * wait for chunk buffers (deferred writes, image I/O, writes held by a
 * take); blksnap_store_wq the work that loads and stores chunks and so
 * frees them, which never waits for the former.
 */
extern struct workqueue_struct *blksnap_wq;
extern struct workqueue_struct *blksnap_store_wq;

/**
 * struct tracker_removal - A disk in del_gendisk(), on its caller's stack.
 * @link: entry in the list of disks being removed.
 * @disk: the disk.
 */
struct tracker_removal {
	struct list_head link;
	struct gendisk *disk;
};

bool tracker_wants(const void *arg);
void tracker_submit_bio(struct bio *bio);
void tracker_disk_removed(struct gendisk *disk, struct tracker_removal *r);
void tracker_disk_gone(struct tracker_removal *r);

int tracker_attach(struct file *file);
int tracker_detach(struct file *file);
struct tracker *tracker_find(struct block_device *bdev);
void tracker_put(struct tracker *tracker);
void tracker_freeze(struct tracker *tracker);
void tracker_unfreeze(struct tracker *tracker);
int tracker_set_diff_area(struct tracker *tracker, struct diff_area *area);
struct diff_area *tracker_diff_area(struct tracker *tracker);
bool tracker_dead(struct tracker *tracker);
void tracker_sync(struct tracker *tracker);

static inline struct tracker *tracker_get(struct tracker *tracker)
{
	kref_get(&tracker->kref);
	return tracker;
}

#endif /* __BLKSNAP_TRACKER_H */
