// SPDX-License-Identifier: GPL-2.0
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt
#include <linux/blkdev.h>
#include <linux/completion.h>
#include <linux/slab.h>
#include <linux/uio.h>
#include "include/uapi/linux/blksnap.h"
#include "chunk.h"
#include "diff_area.h"
#include "diff_buffer.h"
#include "diff_storage.h"
#include "diff_view.h"
#include "event_queue.h"
#include "hook.h"

struct diff_view *diff_view_new(struct diff_area *area,
				struct diff_storage *storage,
				struct event_queue *events)
{
	struct diff_view *view;

	view = kzalloc(sizeof(*view), GFP_KERNEL);
	if (!view)
		return ERR_PTR(-ENOMEM);
	INIT_LIST_HEAD(&view->link);
	xa_init(&view->own);
	view->owning = DIFF_VIEW_OWNING_NONE;
	diff_area_get(area);
	view->area = area;
	diff_storage_get(storage);
	view->storage = storage;
	event_queue_get(events);
	view->events = events;
	return view;
}

/*
 * Under the lock: new copies serve the newest view still whole and go to
 * its storage; none are made once every view is corrupted.
 */
static void __diff_area_retarget(struct diff_area *area)
{
	struct diff_view *view;

	lockdep_assert_held(&area->lock);
	area->newest = 0;
	area->target = NULL;
	list_for_each_entry_reverse(view, &area->views, link) {
		if (!view->error) {
			area->newest = view->seq;
			area->target = view->storage;
			return;
		}
	}
}

/*
 * The take of the view's snapshot, with the device's writes held and
 * none waiting for a copy: the view gets the next sequence, and every
 * chunk is copied again on its next write. The map is cleared after the
 * sequence moved on, with interrupts on: a bit set before then (under
 * the lock) is cleared, one set since is right or merely cleared too,
 * and no write of the device tests it before the caller lets them go.
 */
void diff_view_add(struct diff_view *view)
{
	struct diff_area *area = view->area;

	mutex_lock(&area->views_mutex);
	spin_lock_irq(&area->lock);
	view->seq = ++area->seq;
	view->error = area->error;
	list_add_tail(&view->link, &area->views);
	__diff_area_retarget(area);
	spin_unlock_irq(&area->lock);
	bitmap_zero(area->cow_map, area->chunk_count);
	mutex_unlock(&area->views_mutex);
}

/*
 * Takes the view out of its area, if it was in. Returns whether no view
 * is left, so that the caller stops the area.
 */
bool diff_view_remove(struct diff_view *view)
{
	struct diff_area *area = view->area;
	bool empty;

	mutex_lock(&area->views_mutex);
	spin_lock_irq(&area->lock);
	list_del_init(&view->link);
	empty = list_empty(&area->views);
	__diff_area_retarget(area);
	spin_unlock_irq(&area->lock);
	mutex_unlock(&area->views_mutex);
	return empty;
}

/*
 * Under the lock: whether a view (with @whole, one not corrupted) was
 * taken in (@after, @last].
 */
bool __diff_area_needs(struct diff_area *area, u64 after, u64 last,
		       bool whole)
{
	struct diff_view *view;

	lockdep_assert_held(&area->lock);
	list_for_each_entry(view, &area->views, link)
		if (view->seq > after && view->seq <= last &&
		    (!whole || !view->error))
			return true;
	return false;
}

/* Under the lock: the copies of chunk @n no view reads, unlinked. */
static void __diff_area_trim_chunk(struct diff_area *area, unsigned long n,
				   struct list_head *freed)
{
	struct chunk *chunk = xa_load(&area->chunks, n), *newer = NULL;
	struct chunk *older;

	lockdep_assert_held(&area->lock);
	for (; chunk; chunk = older) {
		older = chunk->older;
		if ((chunk->state != CHUNK_STORED &&
		     chunk->state != CHUNK_FAILED) ||
		    __diff_area_needs(area, older ? older->seq : 0,
				      chunk->seq, false)) {
			newer = chunk;
			continue;
		}
		if (newer)
			newer->older = older;
		else if (older)
			xa_store(&area->chunks, n, older, GFP_NOWAIT);
		else
			xa_erase(&area->chunks, n);
		list_add(&chunk->link, freed);
	}
}

/*
 * After a destroy that left other views: frees the copies whose interval
 * holds no view any more. Copies still being made stay until the area
 * goes.
 */
static void diff_area_trim(struct diff_area *area)
{
	struct chunk *entry, *chunk, *next;
	unsigned long index;
	LIST_HEAD(freed);

	xa_for_each(&area->chunks, index, entry) {
		spin_lock_irq(&area->lock);
		__diff_area_trim_chunk(area, index, &freed);
		spin_unlock_irq(&area->lock);
		list_for_each_entry_safe(chunk, next, &freed, link) {
			list_del(&chunk->link);
			chunk_free(chunk);
		}
		cond_resched();
	}
}

static bool diff_view_idle(struct diff_view *view)
{
	bool idle;

	spin_lock_irq(&view->area->lock);
	idle = !view->nr_clones;
	spin_unlock_irq(&view->area->lock);
	return idle;
}

/*
 * After the view's image went and it left its area (diff_view_remove()):
 * with @trim, once the image's last bios are done, the copies no other
 * view reads go too.
 */
void diff_view_free(struct diff_view *view, bool trim)
{
	struct chunk *chunk;
	unsigned long index;

	if (trim) {
		wait_event(view->area->wq, diff_view_idle(view));
		diff_area_trim(view->area);
	}
	xa_for_each(&view->own, index, chunk)
		chunk_free(chunk);
	xa_destroy(&view->own);
	event_queue_put(view->events);
	diff_storage_put(view->storage);
	diff_area_put(view->area);
	kfree(view);
}

int diff_view_error(struct diff_view *view)
{
	int err;

	spin_lock_irq(&view->area->lock);
	err = view->error;
	spin_unlock_irq(&view->area->lock);
	return err;
}

/*
 * Corrupts @view if it is still whole and queues its event. Also from bio
 * completion (a failed image I/O to the storage): nothing here sleeps.
 */
void diff_view_corrupt(struct diff_view *view, int err)
{
	struct diff_area *area = view->area;
	struct blksnap_event_corrupted data = {
		.dev_id_mj = MAJOR(area->bdev->bd_dev),
		.dev_id_mn = MINOR(area->bdev->bd_dev),
		.err_code = err,
	};
	unsigned long flags;
	bool first;

	spin_lock_irqsave(&area->lock, flags);
	first = !view->error;
	if (first) {
		view->error = err;
		__diff_area_retarget(area);
	}
	spin_unlock_irqrestore(&area->lock, flags);
	if (!first)
		return;
	pr_err("snapshot image %llu of %pg is corrupted: %d\n",
	       view->seq, area->bdev, err);
	event_queue_push(view->events, blksnap_event_code_corrupted, &data,
			 sizeof(data));
	wake_up_all(&area->wq);
}

/*
 * Corrupts the views taken in (@after, @last] that are still whole. In
 * process context.
 */
void diff_area_corrupt_range(struct diff_area *area, u64 after, u64 last,
			     int err)
{
	struct diff_view *view;

	mutex_lock(&area->views_mutex);
	list_for_each_entry(view, &area->views, link) {
		if (view->seq > after && view->seq <= last)
			diff_view_corrupt(view, err);
	}
	mutex_unlock(&area->views_mutex);
}

/*
 * Under the lock: the copy that holds chunk @n as the view's snapshot saw
 * it, the oldest made at or after its take, or NULL when the device
 * still has that data.
 */
struct chunk *__diff_view_copy(struct diff_view *view, unsigned long n)
{
	struct chunk *chunk = xa_load(&view->area->chunks, n);
	struct chunk *found = NULL;

	lockdep_assert_held(&view->area->lock);
	for (; chunk && chunk->seq >= view->seq; chunk = chunk->older)
		found = chunk;
	return found;
}

/*
 * Under the lock: whether @chunk, a copy the view reads, is read by no
 * other view and lies in the view's own storage, so that image writes may
 * land in it.
 */
bool __diff_view_sole(struct diff_view *view, struct chunk *chunk)
{
	struct diff_area *area = view->area;
	u64 after = chunk->older ? chunk->older->seq : 0;
	struct diff_view *other;

	lockdep_assert_held(&area->lock);
	if (chunk->storage != view->storage)
		return false;
	list_for_each_entry(other, &area->views, link)
		if (other != view && other->seq > after &&
		    other->seq <= chunk->seq)
			return false;
	return true;
}

/**
 * struct diff_view_io - A synchronous transfer of a chunk buffer.
 * @io: the file storage I/O.
 * @done: completed when the last part finished.
 * @pending: parts in flight, plus one while they are being sent.
 * @err: the first error.
 */
struct diff_view_io {
	struct diff_storage_io io;
	struct completion done;
	atomic_t pending;
	int err;
};

static void diff_view_io_put(struct diff_view_io *vio)
{
	if (atomic_dec_and_test(&vio->pending))
		complete(&vio->done);
}

static void diff_view_io_endio(struct bio *bio)
{
	struct diff_view_io *vio = bio->bi_private;

	if (bio->bi_status)
		WRITE_ONCE(vio->err, blk_status_to_errno(bio->bi_status));
	bio_put(bio);
	diff_view_io_put(vio);
}

static void diff_view_io_file_done(struct diff_storage_io *io, int err)
{
	struct diff_view_io *vio = container_of(io, struct diff_view_io, io);

	if (err)
		WRITE_ONCE(vio->err, err);
	diff_view_io_put(vio);
}

/* Reads or writes @buf, a chunk's worth, at @sector of @storage. */
static int diff_view_transfer(struct diff_area *area,
			      struct diff_storage *storage, bool write,
			      sector_t sector, struct diff_buffer *buf)
{
	struct block_device *target = storage->target;
	struct diff_view_io vio = {};
	struct bio_vec *bvec = NULL;
	struct iov_iter iter;
	struct bio *bio = NULL;
	unsigned int i;

	init_completion(&vio.done);
	atomic_set(&vio.pending, 1);
	if (!target) {
		bvec = kvmalloc_array(buf->nr_pages, sizeof(*bvec), GFP_NOIO);
		if (!bvec)
			return -ENOMEM;
		for (i = 0; i < buf->nr_pages; i++) {
			bvec[i].bv_page = buf->pages[i];
			bvec[i].bv_len = PAGE_SIZE;
			bvec[i].bv_offset = 0;
		}
		iov_iter_bvec(&iter, write ? WRITE : READ, bvec, buf->nr_pages,
			      (size_t)buf->nr_pages << PAGE_SHIFT);
		vio.io.done = diff_view_io_file_done;
		atomic_inc(&vio.pending);
		diff_storage_submit(storage, &vio.io, write, sector, &iter);
	}
	for (i = 0; target && i < buf->nr_pages; i++) {
		if (bio && bio->bi_vcnt == bio->bi_max_vecs) {
			hook_pass_bio(bio);
			bio = NULL;
		}
		if (!bio) {
			bio = bio_alloc_bioset(target, BIO_MAX_VECS,
					       write ? REQ_OP_WRITE :
						       REQ_OP_READ,
					       GFP_NOIO, &area->load_bs);
			bio->bi_iter.bi_sector = sector;
			bio->bi_end_io = diff_view_io_endio;
			bio->bi_private = &vio;
			atomic_inc(&vio.pending);
		}
		__bio_add_page(bio, buf->pages[i], PAGE_SIZE, 0);
		sector += PAGE_SECTORS;
	}
	if (bio)
		hook_pass_bio(bio);
	diff_view_io_put(&vio);
	wait_for_completion_io(&vio.done);
	kvfree(bvec);
	return vio.err;
}

/*
 * The first image write to chunk @n while its copy @shared serves other
 * views too: the view gets a private copy of it in its own storage. From
 * the image's worker, which alone fills @own, with @owning set to @n
 * under the lock by the check that found @shared not the view's alone;
 * cleared here once the private copy is published or failed. Once its
 * buffers are had, a failure to make the copy (the read of the shared
 * one, room in the storage, the write) corrupts the view, as a failed
 * image I/O to the storage does.
 */
int diff_view_own(struct diff_view *view, unsigned long n,
		  struct chunk *shared)
{
	struct diff_area *area = view->area;
	sector_t size = 1ULL << area->chunk_shift;
	struct diff_buffer *buf;
	struct chunk *own;
	sector_t sector;
	int ret = -ENOMEM;

	own = kzalloc(sizeof(*own), GFP_NOIO);
	buf = diff_buffer_get(&area->pool, GFP_NOIO);
	if (!own || !buf)
		goto out;
	/*
	 * Stable: the other views that read the shared copy write their
	 * own, and this view's writes to the chunk wait for @owning.
	 */
	ret = diff_view_transfer(area, shared->storage, false,
				 shared->storage_sector, buf);
	if (!ret)
		ret = diff_storage_alloc(view->storage, size, &sector);
	if (!ret)
		ret = diff_view_transfer(area, view->storage, true, sector, buf);
	if (ret) {
		diff_view_corrupt(view, ret);
		goto out;
	}
	INIT_LIST_HEAD(&own->link);
	own->area = area;
	own->number = n;
	own->state = CHUNK_STORED;
	own->storage_sector = sector;
	own->seq = view->seq;
	chunk_set_storage(own, view->storage);
	diff_storage_use(view->storage, size);
	ret = xa_err(xa_store(&view->own, n, own, GFP_NOIO));
	if (ret)
		chunk_free(own);
	own = NULL;
out:
	spin_lock_irq(&area->lock);
	view->owning = DIFF_VIEW_OWNING_NONE;
	spin_unlock_irq(&area->lock);
	kfree(own);
	if (buf)
		diff_buffer_put(&area->pool, buf);
	return ret;
}
