/* SPDX-License-Identifier: GPL-2.0 */
#ifndef __BLKSNAP_DIFF_AREA_H
#define __BLKSNAP_DIFF_AREA_H

#include <linux/bio.h>
#include <linux/kref.h>
#include <linux/llist.h>
#include <linux/spinlock.h>
#include <linux/wait.h>
#include <linux/workqueue.h>
#include <linux/xarray.h>
#include "diff_buffer.h"

struct chunk;
struct diff_storage;
struct event_queue;
struct tracker;

/* Image reads from the original device are counted by chunk hash. */
#define DIFF_AREA_READ_BUCKETS 64

/**
 * struct diff_area - Copy-on-write state of one device of a taken snapshot.
 * @kref: the snapshot and the device's image each own a reference.
 * @tracker: the device.
 * @bdev: the original device (&tracker.bdev).
 * @storage: the snapshot's difference storage.
 * @events: the snapshot's events.
 * @capacity: size of the device at take, in sectors.
 * @chunk_shift: log2 of the chunk size in sectors.
 * @chunk_count: number of chunks.
 * @cow_map: a set bit means the chunk's old data is safe and writes to
 *	it pass untouched; tested without a lock on the write path.
 * @lock: guards @chunks' states and lists, @nr_buffers, @deferred,
 *	@store_queue, @reads, @nr_clones, @parked, @error and @stopping.
 * @chunks: the chunks made so far, by number.
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
 * @error: the error that corrupted the image, 0 while it is whole.
 * @stopping: the snapshot is being destroyed: writes pass, nothing is
 *	stored.
 * @pool: buffers of the chunk size.
 * @load_bs: bios for reading old data and storing it in a block device.
 */
struct diff_area {
	struct kref kref;
	struct tracker *tracker;
	struct block_device *bdev;
	struct diff_storage *storage;
	struct event_queue *events;
	sector_t capacity;
	unsigned int chunk_shift;
	unsigned long chunk_count;
	unsigned long *cow_map;

	spinlock_t lock; /* chunk states and lists, counters, error */
	struct xarray chunks;
	unsigned int nr_buffers;
	struct bio_list deferred;
	struct list_head store_queue;
	unsigned int reads[DIFF_AREA_READ_BUCKETS];
	unsigned int nr_clones;
	struct list_head parked[DIFF_AREA_READ_BUCKETS];
	int error;
	bool stopping;

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
struct diff_area *diff_area_new(struct tracker *tracker,
				struct diff_storage *storage,
				struct event_queue *events);
void diff_area_put(struct diff_area *area);
void diff_area_stop(struct diff_area *area);
void diff_area_corrupt(struct diff_area *area, int err);
int diff_area_error(struct diff_area *area);
bool diff_area_write(struct diff_area *area, struct bio *bio, sector_t pos);
void diff_area_chunk_loaded(struct chunk *chunk);
bool diff_area_image_start(struct diff_area *area, struct bio *bio);
bool diff_area_image_io(struct diff_area *area, struct bio *bio,
			bool may_wait);

static inline void diff_area_get(struct diff_area *area)
{
	kref_get(&area->kref);
}

#endif /* __BLKSNAP_DIFF_AREA_H */
