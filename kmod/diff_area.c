// SPDX-License-Identifier: GPL-2.0
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt
#include <linux/error-injection.h>
#include <linux/slab.h>
#include <linux/blkdev.h>
#include <linux/sched.h>
#include <linux/hash.h>
#include <linux/list_sort.h>
#include <linux/uio.h>
#include "include/uapi/linux/blksnap.h"
#include "params.h"
#include "cbt_map.h"
#include "chunk.h"
#include "diff_area.h"
#include "hook.h"
#include "diff_storage.h"
#include "diff_view.h"
#include "event_queue.h"
#include "tracker.h"

/**
 * struct diff_area_clone - Part of an image bio sent to another device.
 * @view: the image's snapshot of the device.
 * @parent: the image bio.
 * @chunk: the first chunk it covers.
 * @nr_reads: chunks counted in &diff_area.reads from @chunk on: those of
 *	a read of the original device, none otherwise.
 * @bio: the clone.
 */
struct diff_area_clone {
	struct diff_view *view;
	struct bio *parent;
	unsigned long chunk;
	unsigned int nr_reads;
	struct bio bio;
};

/**
 * struct diff_area_file_io - Part of an image bio served by a file storage.
 * @io: the storage I/O.
 * @view: the image's snapshot of the device.
 * @parent: the image bio.
 */
struct diff_area_file_io {
	struct diff_storage_io io;
	struct diff_view *view;
	struct bio *parent;
};

/*
 * Write pieces and image clones of every device. Clones are made in
 * ->submit_bio, where waiting on the mempool needs a rescuer; one for the
 * module, not a thread started at every take.
 */
static struct bio_set diff_area_bs;

int diff_area_init(void)
{
	return bioset_init(&diff_area_bs, BIO_POOL_SIZE,
			   offsetof(struct diff_area_clone, bio),
			   BIOSET_NEED_RESCUER);
}

void diff_area_done(void)
{
	bioset_exit(&diff_area_bs);
}

static unsigned int diff_area_bucket(unsigned long chunk)
{
	return hash_long(chunk, ilog2(DIFF_AREA_READ_BUCKETS));
}

static sector_t diff_area_chunk_sectors(struct diff_area *area)
{
	return 1ULL << area->chunk_shift;
}

/* Sector of a write in the device, whether sent to it, its disk or part. */
static sector_t diff_area_pos(struct diff_area *area, struct bio *bio)
{
	return bio->bi_iter.bi_sector + bio->bi_bdev->bd_start_sect -
	       area->bdev->bd_start_sect;
}

static unsigned int diff_area_pick_shift(sector_t capacity)
{
	u64 bytes = (u64)capacity << SECTOR_SHIFT;
	unsigned int shift = chunk_minimum_shift;

	while (shift < chunk_maximum_shift &&
	       (bytes >> shift) > (1ULL << chunk_maximum_count_shift))
		shift++;
	return shift - SECTOR_SHIFT;
}

static void diff_area_load_fn(struct work_struct *work);
static void diff_area_store_fn(struct work_struct *work);
static void diff_area_defer_fn(struct work_struct *work);

struct diff_area *diff_area_new(struct tracker *tracker)
{
	struct diff_area *area;
	int i, ret;

	area = kzalloc(sizeof(*area), GFP_KERNEL);
	if (!area)
		return ERR_PTR(-ENOMEM);
	kref_init(&area->kref);
	area->bdev = tracker->bdev;
	area->capacity = bdev_nr_sectors(area->bdev);
	area->chunk_shift = diff_area_pick_shift(area->capacity);
	area->chunk_count = DIV_ROUND_UP_ULL(area->capacity,
					     diff_area_chunk_sectors(area));
	spin_lock_init(&area->lock);
	/*
	 * Its lock nests in the area's, which bio completions take: it must
	 * never be held with interrupts on (lockdep saw xa_reserve() do it).
	 */
	xa_init_flags(&area->chunks, XA_FLAGS_LOCK_IRQ);
	INIT_LIST_HEAD(&area->views);
	mutex_init(&area->views_mutex);
	bio_list_init(&area->deferred);
	INIT_LIST_HEAD(&area->store_queue);
	for (i = 0; i < DIFF_AREA_READ_BUCKETS; i++)
		INIT_LIST_HEAD(&area->parked[i]);
	init_llist_head(&area->loaded);
	INIT_WORK(&area->load_work, diff_area_load_fn);
	INIT_WORK(&area->store_work, diff_area_store_fn);
	INIT_WORK(&area->defer_work, diff_area_defer_fn);
	init_waitqueue_head(&area->wq);
	diff_buffer_pool_init(&area->pool, diff_area_chunk_sectors(area) <<
			      SECTOR_SHIFT);

	ret = -ENOMEM;
	area->cow_map = kvcalloc(BITS_TO_LONGS(area->chunk_count),
				 sizeof(unsigned long), GFP_KERNEL);
	if (!area->cow_map)
		goto fail_map;
	ret = bioset_init(&area->load_bs, BIO_POOL_SIZE, 0, BIOSET_NEED_BVECS);
	if (ret)
		goto fail_bs;

	area->tracker = tracker_get(tracker);
	return area;

fail_bs:
	kvfree(area->cow_map);
fail_map:
	kfree(area);
	return ERR_PTR(ret);
}
ALLOW_ERROR_INJECTION(diff_area_new, ERRNO);

static void diff_area_release(struct kref *kref)
{
	struct diff_area *area = container_of(kref, struct diff_area, kref);
	struct chunk *chunk, *older;
	unsigned long index;

	xa_for_each(&area->chunks, index, chunk) {
		for (; chunk; chunk = older) {
			older = chunk->older;
			chunk_free(chunk);
		}
	}
	xa_destroy(&area->chunks);
	diff_buffer_pool_done(&area->pool);
	bioset_exit(&area->load_bs);
	kvfree(area->cow_map);
	tracker_put(area->tracker);
	kfree(area);
}

/* Only from process context: the release sleeps. */
void diff_area_put(struct diff_area *area)
{
	kref_put(&area->kref, diff_area_release);
}

int diff_area_error(struct diff_area *area)
{
	return READ_ONCE(area->error);
}

/*
 * No image of the device can be whole any more: every view is corrupted,
 * writes to the device pass from now on and image reads fail. Only the
 * first error is kept. In process context.
 */
void diff_area_corrupt(struct diff_area *area, int err)
{
	spin_lock_irq(&area->lock);
	if (area->error) {
		spin_unlock_irq(&area->lock);
		return;
	}
	area->error = err;
	spin_unlock_irq(&area->lock);

	diff_area_corrupt_range(area, 0, U64_MAX, err);
	wake_up_all(&area->wq);
	/* Frees the buffers still queued for storing. */
	queue_work(blksnap_store_wq, &area->store_work);
}

static void __diff_area_defer(struct diff_area *area, struct bio *bio)
{
	lockdep_assert_held(&area->lock);
	area->nr_busy++;
	bio_list_add(&area->deferred, bio);
	queue_work(blksnap_wq, &area->defer_work);
}

static bool diff_area_has_room(struct diff_area *area)
{
	return READ_ONCE(area->nr_buffers) < free_diff_buffer_pool_size ||
	       READ_ONCE(area->error) || READ_ONCE(area->stopping);
}

/*
 * Why nothing can be preserved any more: the error that corrupted the
 * image, or -ESHUTDOWN once the snapshot is being destroyed; 0 otherwise.
 */
static int __diff_area_lost(struct diff_area *area)
{
	lockdep_assert_held(&area->lock);
	if (area->error)
		return area->error;
	return area->stopping ? -ESHUTDOWN : 0;
}

/*
 * A chunk made for a write but not published: its buffer goes back and
 * the writers waiting for one are woken.
 */
static void diff_area_drop_chunk(struct diff_area *area, struct chunk *chunk)
{
	unsigned long flags;

	spin_lock_irqsave(&area->lock, flags);
	area->nr_buffers--;
	spin_unlock_irqrestore(&area->lock, flags);
	if (chunk)
		chunk_free(chunk);
	wake_up_all(&area->wq);
}

/**
 * enum cow_need - What a write to a chunk needs.
 * @COW_PASS: nothing: the chunk was copied under the newest take, or no
 *	view still whole needs its data.
 * @COW_WAIT: the newest copy is being read; the write waits for it.
 * @COW_COPY: a new copy.
 */
enum cow_need {
	COW_PASS,
	COW_WAIT,
	COW_COPY,
};

/*
 * Under the lock: what a write to chunk @n needs; @newest is set to the
 * chunk's newest copy. A copy still being read, from before the newest
 * take, serves that take too: no write reached the chunk since it began.
 * When no view still whole took a snapshot after the newest copy, the
 * chunk is marked so that writes pass until the next take.
 */
static enum cow_need __diff_area_need(struct diff_area *area, unsigned long n,
				      struct chunk **newest)
{
	struct chunk *chunk = xa_load(&area->chunks, n);

	lockdep_assert_held(&area->lock);
	*newest = chunk;
	if (chunk && chunk->state == CHUNK_LOADING) {
		chunk->seq = area->seq;
		return COW_WAIT;
	}
	if (chunk && chunk->seq == area->seq)
		return COW_PASS;
	if (area->newest <= (chunk ? chunk->seq : 0)) {
		set_bit(n, area->cow_map);
		return COW_PASS;
	}
	return COW_COPY;
}

/*
 * Under the lock: makes @new the newest copy of chunk @n, before @older,
 * for the newest take. A slot that holds a copy, or that the caller
 * reserved, takes it without allocating; an empty one may fail without
 * memory, or when a worker reserved it.
 */
static int __diff_area_publish(struct diff_area *area, unsigned long n,
			       struct chunk *older, struct chunk *new,
			       bool reserved)
{
	int ret;

	lockdep_assert_held(&area->lock);
	if (older || reserved)
		ret = xa_err(xa_store(&area->chunks, n, new,
				      GFP_NOWAIT | __GFP_NOWARN));
	else
		ret = xa_insert(&area->chunks, n, new,
				GFP_NOWAIT | __GFP_NOWARN);
	if (ret)
		return ret;
	new->seq = area->seq;
	new->older = older;
	chunk_set_storage(new, area->target);
	area->nr_busy++;
	return 0;
}

/*
 * The submit path: makes sure chunk @n's old data gets preserved before
 * @bio, a write within that chunk, reaches the device, without sleeping.
 * The bio passes at once only when the chunk needs nothing (copied under
 * the newest take, needed by no view, or lost with the images); it waits
 * for a chunk being read; whatever needs memory that cannot be had at
 * once goes to the worker (diff_area_cow_wait()), which may wait for it.
 */
static void diff_area_cow_submit(struct diff_area *area, unsigned long n,
				 struct bio *bio)
{
	struct chunk *chunk, *new;
	unsigned long flags;

	if (test_bit(n, area->cow_map))
		goto pass;
	spin_lock_irqsave(&area->lock, flags);
	if (__diff_area_lost(area))
		goto pass_unlock;
	switch (__diff_area_need(area, n, &chunk)) {
	case COW_PASS:
		goto pass_unlock;
	case COW_WAIT:
		bio_list_add(&chunk->waiting, bio);
		spin_unlock_irqrestore(&area->lock, flags);
		return;
	case COW_COPY:
		break;
	}
	/* Writes waiting for a buffer keep their order. */
	if (area->nr_buffers >= free_diff_buffer_pool_size ||
	    !bio_list_empty(&area->deferred))
		goto defer;
	area->nr_buffers++;
	spin_unlock_irqrestore(&area->lock, flags);

	new = chunk_new(area, n, GFP_NOWAIT | __GFP_NOWARN);
	if (!new)
		goto drop;
	spin_lock_irqsave(&area->lock, flags);
	/*
	 * Whatever changed meanwhile (a copy made by a worker, a slot it
	 * reserved, no memory), the worker finds what is there.
	 */
	if (__diff_area_lost(area) ||
	    __diff_area_need(area, n, &chunk) != COW_COPY ||
	    __diff_area_publish(area, n, chunk, new, false)) {
		spin_unlock_irqrestore(&area->lock, flags);
		goto drop;
	}
	bio_list_add(&new->waiting, bio);
	spin_unlock_irqrestore(&area->lock, flags);
	chunk_load(new);
	return;

drop:
	diff_area_drop_chunk(area, new);
	spin_lock_irqsave(&area->lock, flags);
defer:
	__diff_area_defer(area, bio);
	spin_unlock_irqrestore(&area->lock, flags);
	return;
pass_unlock:
	spin_unlock_irqrestore(&area->lock, flags);
pass:
	hook_pass_bio(bio);
}

/*
 * The workers' path, in process context: like diff_area_cow_submit() for
 * @bio (a write within chunk @n, or NULL for an image write), but waits
 * for a free buffer and allocates with sleeping allocations, the chunk's
 * slot included, reserved before the lock is taken. Returns 0 once the
 * chunk is preserved, on its way or needed by no view (@bio then waits
 * for it or has passed), or why it will not be: the images are lost, and
 * marked so before @bio passes, or the last snapshot is being destroyed.
 * A write never passes an unpreserved chunk a healthy view needs.
 */
int diff_area_cow_wait(struct diff_area *area, unsigned long n,
		       struct bio *bio)
{
	struct chunk *chunk, *new = NULL;
	enum cow_need need;
	int ret = 0;

	might_sleep();
	if (test_bit(n, area->cow_map))
		goto pass;
	spin_lock_irq(&area->lock);
	for (;;) {
		ret = __diff_area_lost(area);
		if (ret)
			goto pass_unlock;
		need = __diff_area_need(area, n, &chunk);
		if (need != COW_COPY)
			goto found;
		if (area->nr_buffers < free_diff_buffer_pool_size)
			break;
		spin_unlock_irq(&area->lock);
		wait_event(area->wq, diff_area_has_room(area));
		spin_lock_irq(&area->lock);
	}
	area->nr_buffers++;
	spin_unlock_irq(&area->lock);

	new = chunk_new(area, n, GFP_NOIO);
	if (!new)
		goto nomem;
	for (;;) {
		if (xa_reserve_irq(&area->chunks, n, GFP_NOIO))
			goto nomem;
		spin_lock_irq(&area->lock);
		ret = __diff_area_lost(area);
		if (ret)
			goto release_unlock;
		need = __diff_area_need(area, n, &chunk);
		if (need != COW_COPY) {
			xa_release(&area->chunks, n);
			goto found;
		}
		/*
		 * Only when a racing worker released its own reservation of
		 * the same slot can this need memory, and then it tries
		 * again.
		 */
		if (!__diff_area_publish(area, n, chunk, new, true))
			break;
		spin_unlock_irq(&area->lock);
	}
	if (bio)
		bio_list_add(&new->waiting, bio);
	spin_unlock_irq(&area->lock);
	chunk_load(new);
	return 0;

nomem:
	diff_area_drop_chunk(area, new);
	diff_area_corrupt(area, -ENOMEM);
	ret = -ENOMEM;
	goto pass;
release_unlock:
	xa_release(&area->chunks, n);
	spin_unlock_irq(&area->lock);
	goto drop;
found:
	if (need == COW_WAIT && bio) {
		bio_list_add(&chunk->waiting, bio);
		bio = NULL;
	}
pass_unlock:
	spin_unlock_irq(&area->lock);
drop:
	if (new)
		diff_area_drop_chunk(area, new);
pass:
	if (bio)
		hook_pass_bio(bio);
	return ret;
}

/*
 * A write to the original device while the snapshot is held. Returns
 * false when the bio may go on as is: the image is lost, or every chunk it
 * touches is preserved already, the common case, which costs one bitmap
 * scan and no lock. Otherwise the bio is cut at chunk boundaries and each
 * piece waits for its own chunk only.
 */
bool diff_area_write(struct diff_area *area, struct bio *bio, sector_t pos)
{
	sector_t end, chunk_end;
	unsigned long first, last;
	struct blk_plug plug;

	if (READ_ONCE(area->error) || pos >= area->capacity)
		return false;
	switch (bio_op(bio)) {
	case REQ_OP_WRITE:
	case REQ_OP_DISCARD:
	case REQ_OP_WRITE_ZEROES:
	case REQ_OP_SECURE_ERASE:
		break;
	default:
		return false;
	}
	end = min(pos + bio_sectors(bio), area->capacity);
	first = pos >> area->chunk_shift;
	last = (end - 1) >> area->chunk_shift;
	if (find_next_zero_bit(area->cow_map, last + 1, first) > last)
		return false;

	/* The pieces and the loads of neighbouring chunks merge again. */
	blk_start_plug(&plug);
	for (;;) {
		struct bio *piece = bio;

		chunk_end = (pos | (diff_area_chunk_sectors(area) - 1)) + 1;
		if (pos + bio_sectors(bio) > chunk_end &&
		    chunk_end < area->capacity) {
			piece = bio_split(bio, chunk_end - pos, GFP_NOIO,
					  &diff_area_bs);
			if (IS_ERR_OR_NULL(piece)) {
				/* Not splittable: hold it for its first chunk. */
				piece = bio;
			} else {
				bio_chain(piece, bio);
			}
		}
		diff_area_cow_submit(area, pos >> area->chunk_shift, piece);
		if (piece == bio)
			break;
		pos = chunk_end;
	}
	blk_finish_plug(&plug);
	return true;
}

/* A deferred write went on, or a chunk's writes were released. */
static void diff_area_unbusy(struct diff_area *area)
{
	spin_lock_irq(&area->lock);
	if (!--area->nr_busy)
		wake_up_all(&area->wq);
	spin_unlock_irq(&area->lock);
}

static bool diff_area_calm(struct diff_area *area)
{
	bool calm;

	spin_lock_irq(&area->lock);
	calm = !area->nr_busy;
	spin_unlock_irq(&area->lock);
	return calm;
}

/*
 * A take of a device whose area is shared, with its writes held at the
 * filter: lets every write already held for a copy reach the device, so
 * that what the change map counted before the take is in the new image.
 */
void diff_area_quiesce(struct diff_area *area)
{
	spin_lock_irq(&area->lock);
	WRITE_ONCE(area->quiescing, true);
	spin_unlock_irq(&area->lock);
	wait_event(area->wq, diff_area_calm(area));
	spin_lock_irq(&area->lock);
	WRITE_ONCE(area->quiescing, false);
	spin_unlock_irq(&area->lock);
	wake_up_all(&area->wq);
}

static void diff_area_defer_fn(struct work_struct *work)
{
	struct diff_area *area = container_of(work, struct diff_area,
					      defer_work);
	struct bio *bio;

	for (;;) {
		spin_lock_irq(&area->lock);
		bio = bio_list_pop(&area->deferred);
		spin_unlock_irq(&area->lock);
		if (!bio)
			return;
		diff_area_cow_wait(area, diff_area_pos(area, bio) >>
				   area->chunk_shift, bio);
		diff_area_unbusy(area);
	}
}

/* From bio completion: hand the chunk to the load worker. */
void diff_area_chunk_loaded(struct chunk *chunk)
{
	struct diff_area *area = chunk->area;

	if (llist_add(&chunk->llnode, &area->loaded))
		queue_work(blksnap_store_wq, &area->load_work);
}

/*
 * The old data of @chunk is in memory: mark the chunk preserved, release
 * the writes that waited for it and queue it for storing. Returns whether
 * it was queued.
 */
static bool diff_area_release_chunk(struct diff_area *area,
				    struct chunk *chunk)
{
	int err = blk_status_to_errno(READ_ONCE(chunk->load_status));
	unsigned int bucket = diff_area_bucket(chunk->number);
	struct diff_buffer *buf = NULL;
	struct bio_list bios;
	bool queued = false;
	struct bio *bio;

	spin_lock_irq(&area->lock);
	if (!err && !area->error && !area->stopping && area->reads[bucket]) {
		list_add_tail(&chunk->link, &area->parked[bucket]);
		spin_unlock_irq(&area->lock);
		return false;
	}
	/* A copy begun before the newest take does not serve it. */
	if (chunk->seq == area->seq)
		set_bit(chunk->number, area->cow_map);
	bios = chunk->waiting;
	bio_list_init(&chunk->waiting);
	if (err || area->error || area->stopping) {
		chunk->state = CHUNK_FAILED;
		buf = chunk_take_buf(chunk);
		area->nr_buffers--;
	} else {
		chunk->state = CHUNK_STORING;
		list_add_tail(&chunk->link, &area->store_queue);
		queued = true;
	}
	spin_unlock_irq(&area->lock);

	if (buf)
		diff_buffer_put(&area->pool, buf);
	if (err)
		diff_area_corrupt(area, err);
	while ((bio = bio_list_pop(&bios)))
		hook_pass_bio(bio);
	wake_up_all(&area->wq);
	diff_area_unbusy(area);
	return queued;
}

static void diff_area_load_fn(struct work_struct *work)
{
	struct diff_area *area = container_of(work, struct diff_area,
					      load_work);
	struct llist_node *nodes;
	struct chunk *chunk, *next;
	struct blk_plug plug;
	bool store = false;

	nodes = llist_reverse_order(llist_del_all(&area->loaded));
	blk_start_plug(&plug);
	llist_for_each_entry_safe(chunk, next, nodes, llnode)
		store |= diff_area_release_chunk(area, chunk);
	blk_finish_plug(&plug);
	if (store)
		queue_work(blksnap_store_wq, &area->store_work);
}

/**
 * struct store_batch - Chunks stored in consecutive slots by one write.
 * @area: the chunks' device.
 * @storage: the storage they all go to.
 * @chunks: the chunks, linked by &chunk.link.
 * @nr: number of @chunks.
 * @sector: the first slot.
 * @pending: bios in flight to a block device storage, plus one while
 *	they are being submitted.
 * @err: the first error of the batch's I/O.
 * @bvec: the pages of @chunks, for a file storage.
 * @io: the write to a file storage.
 * @work: finishes the batch after its I/O.
 */
struct store_batch {
	struct diff_area *area;
	struct diff_storage *storage;
	struct list_head chunks;
	unsigned int nr;
	sector_t sector;
	atomic_t pending;
	int err;
	struct bio_vec *bvec;
	struct diff_storage_io io;
	struct work_struct work;
};

/*
 * Publishes where a batch's chunks now are and gives their buffers back.
 * The wake-up, under the lock, is the last touch of the area: once
 * @nr_buffers drops, diff_area_stop() may free it.
 */
static void diff_area_store_done(struct store_batch *sb, int err)
{
	struct diff_area *area = sb->area;
	struct diff_buffer *buf, *next_buf;
	struct chunk *chunk, *next;
	LIST_HEAD(bufs);
	unsigned int i = 0;
	u64 after;

	/* A lost copy corrupts the views it serves, no other. */
	if (err && err != -ESHUTDOWN) {
		list_for_each_entry(chunk, &sb->chunks, link) {
			spin_lock_irq(&area->lock);
			after = chunk->older ? chunk->older->seq : 0;
			spin_unlock_irq(&area->lock);
			diff_area_corrupt_range(area, after, chunk->seq, err);
		}
	}
	if (!err)
		diff_storage_use(sb->storage,
				 (sector_t)sb->nr << area->chunk_shift);
	spin_lock_irq(&area->lock);
	list_for_each_entry_safe(chunk, next, &sb->chunks, link) {
		list_del_init(&chunk->link);
		if (err) {
			chunk->state = CHUNK_FAILED;
		} else {
			chunk->state = CHUNK_STORED;
			chunk->storage_sector = sb->sector +
				((sector_t)i << area->chunk_shift);
		}
		list_add(&chunk_take_buf(chunk)->link, &bufs);
		i++;
	}
	spin_unlock_irq(&area->lock);

	list_for_each_entry_safe(buf, next_buf, &bufs, link) {
		list_del(&buf->link);
		diff_buffer_put(&area->pool, buf);
	}

	spin_lock_irq(&area->lock);
	area->nr_buffers -= sb->nr;
	wake_up_all(&area->wq);
	spin_unlock_irq(&area->lock);
}

static void diff_area_store_work_fn(struct work_struct *work)
{
	struct store_batch *sb = container_of(work, struct store_batch, work);

	diff_area_store_done(sb, READ_ONCE(sb->err));
	kvfree(sb->bvec);
	kfree(sb);
}

static void diff_area_store_put(struct store_batch *sb)
{
	if (atomic_dec_and_test(&sb->pending))
		queue_work(blksnap_store_wq, &sb->work);
}

static void diff_area_store_endio(struct bio *bio)
{
	struct store_batch *sb = bio->bi_private;

	if (bio->bi_status)
		WRITE_ONCE(sb->err, blk_status_to_errno(bio->bi_status));
	bio_put(bio);
	diff_area_store_put(sb);
}

/* A block device storage: write the buffers' pages with bios, no copy. */
static void diff_area_store_bios(struct diff_area *area,
				 struct store_batch *sb)
{
	struct block_device *target = sb->storage->target;
	sector_t sector = sb->sector;
	struct bio *bio = NULL;
	struct chunk *chunk;
	unsigned int i;

	atomic_set(&sb->pending, 1);
	list_for_each_entry(chunk, &sb->chunks, link) {
		for (i = 0; i < area->pool.nr_pages; i++) {
			if (bio && bio->bi_vcnt == bio->bi_max_vecs) {
				hook_pass_bio(bio);
				bio = NULL;
			}
			if (!bio) {
				bio = bio_alloc_bioset(target, BIO_MAX_VECS,
						       REQ_OP_WRITE, GFP_NOIO,
						       &area->load_bs);
				bio->bi_iter.bi_sector = sector;
				bio->bi_end_io = diff_area_store_endio;
				bio->bi_private = sb;
				atomic_inc(&sb->pending);
			}
			__bio_add_page(bio, chunk->buf->pages[i], PAGE_SIZE, 0);
			sector += PAGE_SECTORS;
		}
	}
	if (bio)
		hook_pass_bio(bio);
	diff_area_store_put(sb);
}

static void diff_area_store_file_done(struct diff_storage_io *io, int err)
{
	struct store_batch *sb = container_of(io, struct store_batch, io);

	if (err)
		WRITE_ONCE(sb->err, err);
	queue_work(blksnap_store_wq, &sb->work);
}

/* A file storage: the whole batch in one write. */
static noinline int diff_area_store_file(struct diff_area *area,
					 struct store_batch *sb)
{
	unsigned int pages = area->pool.nr_pages;
	struct iov_iter iter;
	struct chunk *chunk;
	unsigned int i, j = 0;

	sb->bvec = kvmalloc_array(sb->nr * pages, sizeof(*sb->bvec),
				  GFP_NOIO);
	if (!sb->bvec)
		return -ENOMEM;
	list_for_each_entry(chunk, &sb->chunks, link) {
		for (i = 0; i < pages; i++) {
			sb->bvec[j].bv_page = chunk->buf->pages[i];
			sb->bvec[j].bv_len = PAGE_SIZE;
			sb->bvec[j].bv_offset = 0;
			j++;
		}
	}
	iov_iter_bvec(&iter, WRITE, sb->bvec, j, (size_t)j << PAGE_SHIFT);
	sb->io.done = diff_area_store_file_done;
	diff_storage_submit(sb->storage, &sb->io, true, sb->sector, &iter);
	return 0;
}
ALLOW_ERROR_INJECTION(diff_area_store_file, ERRNO);

/*
 * A batch's chunks go to their slots in device order, whatever order their
 * old data was read in: an image read over neighbouring chunks then finds
 * them in neighbouring slots and goes out as one bio.
 */
static int diff_area_chunk_cmp(void *priv, const struct list_head *a,
			       const struct list_head *b)
{
	return list_entry(a, struct chunk, link)->number >
	       list_entry(b, struct chunk, link)->number;
}

/*
 * A batch that found no room in its storage: the views that keep their
 * copies there are corrupted, and the batch's copies that a view still
 * whole reads go back to the queue, for the storage of the newest such
 * view (they then count against its limit). What is left in the batch
 * serves no whole view and fails with it.
 */
static void diff_area_move_batch(struct diff_area *area,
				 struct store_batch *sb, int err)
{
	struct chunk *chunk, *next;
	struct diff_view *view;
	struct diff_storage *to;
	unsigned int moved = 0;

	mutex_lock(&area->views_mutex);
	list_for_each_entry(view, &area->views, link)
		if (view->storage == sb->storage)
			diff_view_corrupt(view, err);
	mutex_unlock(&area->views_mutex);

	spin_lock_irq(&area->lock);
	to = area->target;
	if (!to || to == sb->storage || area->error || area->stopping) {
		spin_unlock_irq(&area->lock);
		return;
	}
	list_for_each_entry_safe_reverse(chunk, next, &sb->chunks, link) {
		if (!__diff_area_needs(area, chunk->older ? chunk->older->seq : 0,
				       chunk->seq, true))
			continue;
		/* Its reference to the old storage is dropped below. */
		chunk_set_storage(chunk, to);
		list_move(&chunk->link, &area->store_queue);
		moved++;
	}
	sb->nr -= moved;
	spin_unlock_irq(&area->lock);
	/* Its release sleeps; the batch's chunks then keep it no more. */
	while (moved--)
		diff_storage_put(sb->storage);
}

/*
 * Takes up to chunk_maximum_in_queue chunks at a time off the store queue
 * and writes each batch to consecutive slots. Batches are in flight
 * together; the worker does not wait for them (only a file that takes no
 * direct I/O is written synchronously).
 */
static void diff_area_store_fn(struct work_struct *work)
{
	struct diff_area *area = container_of(work, struct diff_area,
					      store_work);

	for (;;) {
		struct store_batch local = {}, *sb;
		struct chunk *chunk, *next;
		bool skip;
		int err;

		/* Only this worker takes from the queue: it stays non-empty. */
		spin_lock_irq(&area->lock);
		skip = list_empty(&area->store_queue);
		spin_unlock_irq(&area->lock);
		if (skip)
			return;
		/* Without memory the batch is still finished, as failed. */
		sb = kzalloc(sizeof(*sb), GFP_NOIO) ?: &local;
		spin_lock_irq(&area->lock);
		sb->area = area;
		INIT_LIST_HEAD(&sb->chunks);
		INIT_WORK(&sb->work, diff_area_store_work_fn);
		sb->storage = list_first_entry(&area->store_queue,
					       struct chunk, link)->storage;
		/* Copies made under an older take may go to another storage. */
		list_for_each_entry_safe(chunk, next, &area->store_queue, link) {
			if (sb->nr == chunk_maximum_in_queue)
				break;
			if (chunk->storage != sb->storage)
				continue;
			list_move_tail(&chunk->link, &sb->chunks);
			sb->nr++;
		}
		list_sort(NULL, &sb->chunks, diff_area_chunk_cmp);
		skip = area->error || area->stopping;
		spin_unlock_irq(&area->lock);

		if (skip)
			err = -ESHUTDOWN;
		else if (sb == &local)
			err = -ENOMEM;
		else
			err = diff_storage_alloc(sb->storage,
						 (sector_t)sb->nr << area->chunk_shift,
						 &sb->sector);
		/* No room: what still serves a whole view moves on. */
		if (err && !skip && sb != &local)
			diff_area_move_batch(area, sb, err);
		if (!err && sb->storage->target) {
			diff_area_store_bios(area, sb);
			continue;
		}
		if (!err)
			err = diff_area_store_file(area, sb);
		if (!err)
			continue;
		diff_area_store_done(sb, err);
		if (sb != &local)
			kfree(sb);
	}
}

static bool diff_area_idle(struct diff_area *area)
{
	bool idle;

	spin_lock_irq(&area->lock);
	idle = !area->nr_buffers && !area->nr_clones &&
	       bio_list_empty(&area->deferred);
	spin_unlock_irq(&area->lock);
	return idle;
}

/*
 * On destroy, once no write can reach the area any more: let every held
 * write go, drop what is not stored, and wait for the I/O in flight.
 */
void diff_area_stop(struct diff_area *area)
{
	spin_lock_irq(&area->lock);
	area->stopping = true;
	spin_unlock_irq(&area->lock);
	wake_up_all(&area->wq);
	queue_work(blksnap_wq, &area->defer_work);
	queue_work(blksnap_store_wq, &area->store_work);
	wait_event(area->wq, diff_area_idle(area));
	flush_work(&area->defer_work);
	flush_work(&area->load_work);
	flush_work(&area->store_work);
}

static void diff_area_clone_done(struct diff_view *view, unsigned long first,
				 unsigned int nr_reads)
{
	struct diff_area *area = view->area;
	struct chunk *chunk, *next;
	bool release = false;
	unsigned long flags;
	unsigned int i, bucket;

	spin_lock_irqsave(&area->lock, flags);
	area->nr_clones--;
	view->nr_clones--;
	for (i = 0; i < nr_reads; i++) {
		bucket = diff_area_bucket(first + i);
		if (--area->reads[bucket])
			continue;
		list_for_each_entry_safe(chunk, next, &area->parked[bucket],
					 link) {
			list_del_init(&chunk->link);
			llist_add(&chunk->llnode, &area->loaded);
			release = true;
		}
	}
	if (release)
		queue_work(blksnap_store_wq, &area->load_work);
	/*
	 * Under the lock: diff_area_stop() may free the area right after,
	 * diff_view_free() the view.
	 */
	if (!area->nr_clones || !view->nr_clones)
		wake_up_all(&area->wq);
	spin_unlock_irqrestore(&area->lock, flags);
}

static void diff_area_clone_endio(struct bio *clone)
{
	struct diff_area_clone *dc = container_of(clone,
						  struct diff_area_clone, bio);
	struct diff_view *view = dc->view;
	struct bio *parent = dc->parent;
	unsigned long first = dc->chunk;
	unsigned int nr_reads = dc->nr_reads;

	if (clone->bi_status) {
		parent->bi_status = clone->bi_status;
		/*
		 * A clone that counts no reads went to the storage: the chunk
		 * it read or wrote there can no longer be trusted by this
		 * view (another view sharing the copy finds out on its own
		 * read). Marked before the image bio ends, so that no later
		 * read of the image finds it healthy.
		 */
		if (!nr_reads)
			diff_view_corrupt(view,
					  blk_status_to_errno(clone->bi_status));
	}
	bio_put(clone);
	bio_endio(parent);
	diff_area_clone_done(view, first, nr_reads);
}

/*
 * Sends the next @len sectors of an image bio to @bdev at @sector,
 * asynchronously: the original device for a chunk not preserved, a block
 * device storage for a stored one. The caller counted it in @nr_clones.
 */
static void diff_area_clone(struct diff_view *view, struct bio *bio,
			    sector_t len, unsigned long n,
			    unsigned int nr_reads, struct block_device *bdev,
			    sector_t sector)
{
	struct diff_area_clone *dc;
	struct bio *clone;

	clone = bio_alloc_clone(bdev, bio, GFP_NOIO, &diff_area_bs);
	dc = container_of(clone, struct diff_area_clone, bio);
	dc->view = view;
	dc->parent = bio;
	dc->chunk = n;
	dc->nr_reads = nr_reads;
	clone->bi_iter.bi_size = len << SECTOR_SHIFT;
	clone->bi_iter.bi_sector = sector;
	clone->bi_end_io = diff_area_clone_endio;
	bio_inc_remaining(bio);
	hook_pass_bio(clone);
}

static void diff_area_file_io_done(struct diff_storage_io *io, int err)
{
	struct diff_area_file_io *fio = container_of(io,
						     struct diff_area_file_io,
						     io);
	struct diff_view *view = fio->view;
	struct bio *parent = fio->parent;

	kfree(fio);
	if (err) {
		parent->bi_status = errno_to_blk_status(err);
		/* As in diff_area_clone_endio(), before the image bio ends. */
		diff_view_corrupt(view, err);
	}
	bio_endio(parent);
	diff_area_clone_done(view, 0, 0);
}

/*
 * The next @len sectors of an image bio from or to a file storage at @at,
 * straight from the bio's pages. The caller counted it in @nr_clones, and
 * uncounts it if this fails (which does nothing else, so that an error
 * can be injected here).
 */
static noinline int diff_area_file_io(struct diff_view *view,
				      struct diff_storage *storage,
				      struct bio *bio, sector_t len,
				      sector_t at)
{
	struct bvec_iter bi = bio->bi_iter, it;
	struct diff_area_file_io *fio;
	struct iov_iter iter;
	unsigned int nr = 0;
	struct bio_vec bv;

	fio = kmalloc(sizeof(*fio), GFP_NOIO);
	if (!fio)
		return -ENOMEM;
	fio->view = view;
	fio->parent = bio;
	fio->io.done = diff_area_file_io_done;

	bi.bi_size = len << SECTOR_SHIFT;
	__bio_for_each_bvec(bv, bio, it, bi)
		nr++;
	iov_iter_bvec(&iter, op_is_write(bio_op(bio)) ? WRITE : READ,
		      __bvec_iter_bvec(bio->bi_io_vec, bi), nr, bi.bi_size);
	iter.iov_offset = bi.bi_bvec_done;
	bio_inc_remaining(bio);
	diff_storage_submit(storage, &fio->io, op_is_write(bio_op(bio)), at,
			    &iter);
	return 0;
}
ALLOW_ERROR_INJECTION(diff_area_file_io, ERRNO);

static bool diff_area_chunk_settled(struct diff_area *area,
				    struct chunk *chunk)
{
	return READ_ONCE(chunk->state) >= CHUNK_STORED ||
	       READ_ONCE(area->error);
}

/* Under the lock: the copy an image of @view reads chunk @n from. */
static struct chunk *__diff_area_source(struct diff_view *view,
					unsigned long n)
{
	return xa_load(&view->own, n) ?: __diff_view_copy(view, n);
}

/*
 * Extends the part of an image read that starts in chunk @n and ends by
 * @end over the chunks after @n whose data lies right after on the same
 * device: chunks the view reads from the original device, or for
 * @stored ones, those stored in the slots following @n's in the same
 * storage. One bio then serves them, where the submitter's own bios
 * would not have merged. Under the lock. Returns the number of chunks the
 * part covers.
 */
static unsigned int diff_area_extend(struct diff_view *view, unsigned long n,
				     struct chunk *stored, sector_t end,
				     sector_t *len)
{
	struct diff_area *area = view->area;
	sector_t size = diff_area_chunk_sectors(area);
	sector_t next_pos = (sector_t)(n + 1) << area->chunk_shift;
	unsigned int nr = 1;
	struct chunk *next;

	while (next_pos < end) {
		next = __diff_area_source(view, n + nr);
		if (stored ? !next || next->state != CHUNK_STORED ||
		    next->storage != stored->storage ||
		    next->storage_sector != stored->storage_sector + nr * size :
		    next && next->state != CHUNK_LOADING)
			break;
		*len += min(end - next_pos, size);
		next_pos += size;
		nr++;
	}
	return nr;
}

/*
 * Sends the next sectors of an image bio where they are now, at least the
 * rest of the current chunk, and sets @len to how many. Without @may_wait
 * (in ->submit_bio) only what goes on without sleeping is sent and -EAGAIN
 * means the rest is for the worker: a chunk whose old data is on its way,
 * a first image write to a chunk, or a file storage.
 */
static int diff_area_image_part(struct diff_view *view, struct bio *bio,
				bool may_wait, sector_t *len)
{
	struct diff_area *area = view->area;
	sector_t pos = bio->bi_iter.bi_sector;
	sector_t end = bio_end_sector(bio);
	unsigned long n = pos >> area->chunk_shift;
	bool write = op_is_write(bio_op(bio));
	struct block_device *target;
	enum chunk_state state;
	unsigned int nr, i;
	struct chunk *chunk;
	sector_t at;
	bool mine;
	int ret;

	for (;;) {
		*len = min(end, (sector_t)(n + 1) << area->chunk_shift) - pos;
		spin_lock_irq(&area->lock);
		if (area->error || view->error) {
			spin_unlock_irq(&area->lock);
			return -EIO;
		}
		mine = xa_load(&view->own, n);
		chunk = __diff_area_source(view, n);
		/* Until its writes are released the device has the old data. */
		if (!write && (!chunk || chunk->state == CHUNK_LOADING)) {
			/* New reads would hold up the take's parked chunks. */
			if (area->quiescing) {
				spin_unlock_irq(&area->lock);
				if (!may_wait)
					return -EAGAIN;
				/* One flag: no lock needed to see it clear. */
				wait_event(area->wq, !READ_ONCE(area->quiescing));
				continue;
			}
			nr = diff_area_extend(view, n, NULL, end, len);
			for (i = 0; i < nr; i++)
				area->reads[diff_area_bucket(n + i)]++;
			area->nr_clones++;
			view->nr_clones++;
			spin_unlock_irq(&area->lock);
			diff_area_clone(view, bio, *len, n, nr, area->bdev, pos);
			return 0;
		}
		state = chunk ? chunk->state : CHUNK_LOADING;
		/*
		 * An image write lands in a copy no other view reads; while
		 * the worker makes the view's own, writes to the chunk wait
		 * for it.
		 */
		if (state == CHUNK_STORED && write && !mine &&
		    (view->owning == n || !__diff_view_sole(view, chunk))) {
			if (!may_wait) {
				spin_unlock_irq(&area->lock);
				return -EAGAIN;
			}
			view->owning = n;
			spin_unlock_irq(&area->lock);
			ret = diff_view_own(view, n, chunk);
			if (ret)
				return ret;
			continue;
		}
		target = chunk ? chunk->storage->target : NULL;
		if (state == CHUNK_STORED && (target || may_wait)) {
			if (!write)
				diff_area_extend(view, n, chunk, end, len);
			at = chunk->storage_sector + pos -
			     ((sector_t)n << area->chunk_shift);
			area->nr_clones++;
			view->nr_clones++;
			spin_unlock_irq(&area->lock);
			if (!target) {
				ret = diff_area_file_io(view, chunk->storage,
							bio, *len, at);
				if (ret)
					diff_area_clone_done(view, 0, 0);
				return ret;
			}
			diff_area_clone(view, bio, *len, n, 0, target, at);
			return 0;
		}
		if (state == CHUNK_FAILED) {
			spin_unlock_irq(&area->lock);
			return -EIO;
		}
		spin_unlock_irq(&area->lock);
		if (!may_wait)
			return -EAGAIN;
		if (!chunk) {
			/* An image write first needs the chunk's copy. */
			if (diff_area_cow_wait(area, n, NULL))
				return -EIO;
			continue;
		}
		wait_event(area->wq, diff_area_chunk_settled(area, chunk));
	}
}

/*
 * Checks an image bio on entry and marks what it writes as changed; the
 * block layer already ended bios past the image's end. Returns false when
 * the bio was ended here.
 */
bool diff_area_image_start(struct diff_view *view, struct bio *bio)
{
	if (bio_op(bio) != REQ_OP_READ && bio_op(bio) != REQ_OP_WRITE) {
		bio->bi_status = BLK_STS_NOTSUPP;
		bio_endio(bio);
		return false;
	}
	if (op_is_write(bio_op(bio)))
		cbt_map_mark_both(view->area->tracker->cbt_map,
				  bio->bi_iter.bi_sector, bio_sectors(bio));
	return true;
}

/*
 * Serves an image bio from where it stands, part by part, advancing it
 * past each part sent on: the submitter's context serves what needs no
 * wait, the image's worker (@may_wait) the rest. Returns false, with the
 * bio not ended, when the rest needs the worker.
 */
bool diff_area_image_io(struct diff_view *view, struct bio *bio,
			bool may_wait)
{
	int err = 0;

	while (bio->bi_iter.bi_size) {
		sector_t len;

		err = diff_area_image_part(view, bio, may_wait, &len);
		if (err == -EAGAIN)
			return false;
		if (err) {
			bio->bi_status = errno_to_blk_status(err);
			break;
		}
		bio_advance(bio, len << SECTOR_SHIFT);
	}
	bio_endio(bio);
	return true;
}
