/* SPDX-License-Identifier: GPL-2.0 */
#ifndef __BLKSNAP_DIFF_AREA_H
#define __BLKSNAP_DIFF_AREA_H

#include <linux/bio.h>
#include <linux/kref.h>
#include <linux/llist.h>
#include <linux/mutex.h>
#include <linux/spinlock.h>
#include <linux/wait.h>
#include <linux/workqueue.h>
#include <linux/xarray.h>
#include "diff_buffer.h"

struct chunk;
struct diff_storage;
struct diff_view;
struct event_queue;
struct tracker;

/*
 * Several snapshots of one device, one copy per chunk.
 *
 * A tracked device has one &struct diff_area while any snapshot of it is
 * held, shared by all of them; each held snapshot of the device is a
 * &struct diff_view of it. Every take of the device numbers its view with
 * the area's next take sequence (@seq) and clears @cow_map, so the first
 * write to a chunk after the newest take copies it again, once, whatever
 * the number of snapshots: the write path never looks at the views.
 *
 * Each copy of a chunk (&struct chunk) carries the sequence in effect
 * when it was made, and the chunk's copies form a chain, newest first, in
 * @chunks. A copy tagged t whose next older copy is tagged p holds the
 * data every snapshot taken at a sequence in (p, t] saw: no write reached
 * the chunk between those takes and the copy. So an image of a snapshot
 * taken at s reads the oldest copy tagged s or later, and the original
 * device when there is none. A write copies only when some view still
 * whole needs it (the newest such view is younger than the chunk's newest
 * copy).
 *
 * A copy goes to the difference storage of the newest view still whole
 * when it is made and holds a reference to it, so a storage outlives its
 * snapshot while older snapshots still read copies there. A destroy frees
 * the copies whose interval holds no remaining view. A store that finds
 * no room corrupts the views of that storage, and its copies that a whole
 * view still reads move to the storage of the newest whole view; a store
 * that fails otherwise corrupts the views of that copy's interval only.
 * Image writes go to a copy that
 * serves only the writing view, or to a private copy of the view made
 * on the first write (&diff_view.own), so no other snapshot sees them.
 * A take first lets every write already held for a copy reach the
 * device, so that a write the change map counted before the take is in
 * the image.
 */

/* Image reads from the original device are counted by chunk hash. */
#define DIFF_AREA_READ_BUCKETS 64

/**
 * struct diff_area - Copy-on-write state of a device while snapshots of it
 *	are held.
 * @kref: each view and each image of the device own a reference.
 * @tracker: the device.
 * @bdev: the original device (&tracker.bdev).
 * @capacity: size of the device at take, in sectors.
 * @chunk_shift: log2 of the chunk size in sectors.
 * @chunk_count: number of chunks.
 * @cow_map: a set bit means the chunk's old data is safe and writes to
 *	it pass untouched; tested without a lock on the write path.
 * @lock: guards @chunks' states, tags and lists, @nr_buffers, @deferred,
 *	@store_queue, @reads, @nr_clones, @parked, @error, @stopping,
 *	@quiescing, the take state below and the list of views.
 * @chunks: the newest copy of each chunk copied so far, by number.
 * @seq: sequence of the newest take.
 * @newest: sequence of the newest view still whole, 0 for none.
 * @target: storage of that view, where new copies go.
 * @views: the views, oldest first; changed under @lock and @views_mutex.
 * @views_mutex: lets the workers walk @views while they sleep.
 * @nr_busy: chunks being loaded plus writes deferred: what a take waits
 *	for.
 * @nr_buffers: chunks holding a buffer, at most
 *	free_diff_buffer_pool_size.
 * @deferred: writes that need a new chunk while no buffer was free.
 * @store_queue: chunks whose old data waits to be stored.
 * @reads: image reads in flight to the original device, by chunk hash:
 *	the writes to a chunk whose old data was just read wait until no
 *	such read of its bucket remains, or the read could see new data.
 * @nr_clones: parts of image bios in flight to the original device (the
 *	sum of @reads) or to the storage.
 * @parked: loaded chunks waiting for @reads of their bucket to drain.
 * @loaded: chunks whose old data came in, for @load_work.
 * @load_work: releases the writes of loaded chunks, queues them to store.
 * @store_work: writes @store_queue to the storage in batches.
 * @defer_work: serves @deferred, waiting for buffers.
 * @wq: woken on chunk state changes, freed buffers and errors.
 * @error: the error that corrupted every view, 0 while they may be whole.
 * @stopping: the last view is being destroyed: writes pass, nothing is
 *	stored.
 * @quiescing: a take waits for @nr_busy: image reads of the original
 *	device wait, so that no new one holds a chunk in @parked.
 * @pool: buffers of the chunk size.
 * @load_bs: bios for reading old data and storing it in a block device.
 */
struct diff_area {
	struct kref kref;
	struct tracker *tracker;
	struct block_device *bdev;
	sector_t capacity;
	unsigned int chunk_shift;
	unsigned long chunk_count;
	unsigned long *cow_map;

	spinlock_t lock; /* chunk states and lists, counters, error */
	struct xarray chunks;
	u64 seq;
	u64 newest;
	struct diff_storage *target;
	struct list_head views;
	struct mutex views_mutex; /* walks of views that sleep */
	unsigned int nr_busy;
	unsigned int nr_buffers;
	struct bio_list deferred;
	struct list_head store_queue;
	unsigned int reads[DIFF_AREA_READ_BUCKETS];
	unsigned int nr_clones;
	struct list_head parked[DIFF_AREA_READ_BUCKETS];
	int error;
	bool stopping;
	bool quiescing;

	struct llist_head loaded;
	struct work_struct load_work;
	struct work_struct store_work;
	struct work_struct defer_work;
	wait_queue_head_t wq;

	struct diff_buffer_pool pool;
	struct bio_set load_bs;
};

int diff_area_init(void);
void diff_area_done(void);
struct diff_area *diff_area_new(struct tracker *tracker);
void diff_area_put(struct diff_area *area);
void diff_area_stop(struct diff_area *area);
void diff_area_quiesce(struct diff_area *area);
void diff_area_corrupt(struct diff_area *area, int err);
int diff_area_error(struct diff_area *area);
bool diff_area_write(struct diff_area *area, struct bio *bio, sector_t pos);
void diff_area_chunk_loaded(struct chunk *chunk);
int diff_area_cow_wait(struct diff_area *area, unsigned long n,
		       struct bio *bio);
bool diff_area_image_start(struct diff_view *view, struct bio *bio);
bool diff_area_image_io(struct diff_view *view, struct bio *bio,
			bool may_wait);

static inline void diff_area_get(struct diff_area *area)
{
	kref_get(&area->kref);
}

#endif /* __BLKSNAP_DIFF_AREA_H */
