/* SPDX-License-Identifier: GPL-2.0 */
#ifndef __BLKSNAP_DIFF_STORAGE_H
#define __BLKSNAP_DIFF_STORAGE_H

#include <linux/kref.h>
#include <linux/list.h>
#include <linux/mutex.h>
#include <linux/fs.h>
#include <linux/blk_types.h>
#include <linux/atomic.h>
#include <linux/wait.h>

struct event_queue;
struct iov_iter;

/**
 * struct diff_storage - Where a snapshot keeps the old data of its chunks.
 * @kref: the snapshot and its devices' copy-on-write state each own one.
 * @link: entry in the list of storages not yet released.
 * @file: the caller's file: a regular file, or a block device held
 *	exclusively.
 * @bdev: the block device the storage lives on, if any: no device of the
 *	snapshot may be it.
 * @target: the storage itself when it is a block device: it is then
 *	written and read with bios, without its page cache.
 * @events: the snapshot's events, for low space.
 * @lock: guards @capacity, @filled and @low_space_sent, and serializes
 *	growth.
 * @capacity: sectors usable now.
 * @filled: sectors handed out; slots are never reused while held.
 * @limit: the most sectors the storage may grow to.
 * @growable: a regular file, grown by fallocate().
 * @dio_align: alignment of direct I/O to a file storage, in bytes; 0
 *	when the file takes none.
 * @low_space_sent: the low space event was queued.
 * @used: sectors of the copies stored in it that are still kept.
 * @due: copies bound for it that are not written yet (being read from
 *	their device or queued for the store): its snapshot's destroy waits
 *	for them, so that nothing writes to it once the destroy returns.
 * @due_wq: woken when @due drops to 0.
 */
struct diff_storage {
	struct kref kref;
	struct list_head link;
	struct file *file;
	struct block_device *bdev;
	struct block_device *target;
	struct event_queue *events;
	struct mutex lock; /* capacity, filled, growth */
	sector_t capacity;
	sector_t filled;
	sector_t limit;
	bool growable;
	unsigned int dio_align;
	bool low_space_sent;
	atomic64_t used;
	atomic_t due;
	wait_queue_head_t due_wq;
};

/**
 * struct diff_storage_io - One read or write of a file storage.
 * @iocb: the direct I/O.
 * @bytes: its size.
 * @done: called once, when it finished, with 0 or an error; from any
 *	context, interrupts included.
 */
struct diff_storage_io {
	struct kiocb iocb;
	size_t bytes;
	void (*done)(struct diff_storage_io *io, int err);
};

struct diff_storage *diff_storage_new(unsigned int fd, sector_t limit,
				      struct event_queue *events);
void diff_storage_put(struct diff_storage *storage);
void diff_storage_wait_arrivals(struct diff_storage *storage);
bool diff_storage_on_bdev(struct diff_storage *storage,
			  struct block_device *bdev);
int diff_storage_alloc(struct diff_storage *storage, sector_t count,
		       sector_t *sector);
void diff_storage_submit(struct diff_storage *storage,
			 struct diff_storage_io *io, bool write, sector_t sector,
			 struct iov_iter *iter);

static inline void diff_storage_get(struct diff_storage *storage)
{
	kref_get(&storage->kref);
}

/* A copy is bound for the storage; from under spinlocks too. */
static inline void diff_storage_due(struct diff_storage *storage)
{
	atomic_inc(&storage->due);
}

/* A copy bound for it was written, failed or dropped, or went elsewhere. */
static inline void diff_storage_arrived(struct diff_storage *storage)
{
	if (atomic_dec_and_test(&storage->due))
		wake_up_all(&storage->due_wq);
}

static inline void diff_storage_use(struct diff_storage *storage,
				    sector_t count)
{
	atomic64_add(count, &storage->used);
}

static inline void diff_storage_unuse(struct diff_storage *storage,
				      sector_t count)
{
	atomic64_sub(count, &storage->used);
}

#endif /* __BLKSNAP_DIFF_STORAGE_H */
