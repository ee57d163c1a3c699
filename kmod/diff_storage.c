// SPDX-License-Identifier: GPL-2.0
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt
#include <linux/error-injection.h>
#include <linux/slab.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/falloc.h>
#include <linux/uio.h>
#include <linux/sched/mm.h>
#include <linux/blkdev.h>
#include "include/uapi/linux/blksnap.h"
#include "compat.h"
#include "params.h"
#include "event_queue.h"
#include "diff_storage.h"

/* Grows a file storage by at least @count sectors, within its limit. */
static noinline int __diff_storage_grow(struct diff_storage *storage,
					sector_t count)
{
	unsigned int noio_flags;
	sector_t grow;
	int ret;

	lockdep_assert_held(&storage->lock);
	grow = max_t(sector_t, count, diff_storage_minimum);
	grow = min(grow, storage->limit - storage->capacity);
	if (!storage->growable || grow < count)
		return -ENOSPC;
	/*
	 * The store worker grows the file while writes of the devices wait
	 * for it: what the file system allocates must not wait for them.
	 */
	noio_flags = memalloc_noio_save();
	ret = vfs_fallocate(storage->file, 0,
			    (loff_t)storage->capacity << SECTOR_SHIFT,
			    (loff_t)grow << SECTOR_SHIFT);
	memalloc_noio_restore(noio_flags);
	if (ret) {
		pr_err("cannot grow the difference storage by %llu sectors: %d\n",
		       (u64)grow, ret);
		return ret == -EOPNOTSUPP ? ret : -ENOSPC;
	}
	storage->capacity += grow;
	return 0;
}
ALLOW_ERROR_INJECTION(__diff_storage_grow, ERRNO);

/*
 * Every storage not yet released, its snapshot held or destroyed: a
 * destroyed snapshot's storage may still hold copies older snapshots read.
 */
static LIST_HEAD(diff_storages);
static DEFINE_MUTEX(diff_storages_lock);

/*
 * Whether @a and @b are one file or one block device: each hands out
 * slots from sector 0, so two snapshots on one storage overwrite each
 * other's old data.
 */
static bool diff_storage_same(const struct diff_storage *a,
			      const struct diff_storage *b)
{
	return a->file->f_mapping->host == b->file->f_mapping->host;
}

/* Lists @storage unless a storage not yet released is the same: -EBUSY. */
static int diff_storage_register(struct diff_storage *storage)
{
	struct diff_storage *other;
	int ret = 0;

	mutex_lock(&diff_storages_lock);
	list_for_each_entry(other, &diff_storages, link) {
		if (diff_storage_same(other, storage)) {
			ret = -EBUSY;
			break;
		}
	}
	if (!ret)
		list_add_tail(&storage->link, &diff_storages);
	mutex_unlock(&diff_storages_lock);
	return ret;
}

struct diff_storage *diff_storage_new(unsigned int fd, sector_t limit,
				      struct event_queue *events)
{
	struct diff_storage *storage;
	struct inode *inode;
	struct file *file;
	int ret;

	if (!limit)
		return ERR_PTR(-EINVAL);
	file = fget(fd);
	if (!file)
		return ERR_PTR(-EBADF);
	ret = -EBADF;
	if ((file->f_mode & (FMODE_READ | FMODE_WRITE)) !=
	    (FMODE_READ | FMODE_WRITE))
		goto fail_file;

	storage = kzalloc(sizeof(*storage), GFP_KERNEL);
	ret = -ENOMEM;
	if (!storage)
		goto fail_file;
	kref_init(&storage->kref);
	mutex_init(&storage->lock);
	init_waitqueue_head(&storage->due_wq);
	storage->file = file;
	storage->limit = limit;

	inode = file_inode(file);
	if (S_ISBLK(inode->i_mode)) {
		/* Exclusive, so nothing can read the old data through it. */
		ret = -EINVAL;
		if (!blksnap_bdev_file_exclusive(file))
			goto fail_storage;
		storage->bdev = I_BDEV(file->f_mapping->host);
		storage->target = storage->bdev;
		storage->capacity = min(bdev_nr_sectors(storage->bdev), limit);
	} else if (S_ISREG(inode->i_mode)) {
		ret = -EOPNOTSUPP;
		if (!file->f_op->fallocate || !file->f_op->write_iter ||
		    !file->f_op->read_iter)
			goto fail_storage;
		storage->bdev = inode->i_sb->s_bdev;
		storage->growable = true;
		if (file->f_mode & FMODE_CAN_ODIRECT)
			storage->dio_align = storage->bdev ?
				bdev_logical_block_size(storage->bdev) :
				PAGE_SIZE;
		mutex_lock(&storage->lock);
		ret = __diff_storage_grow(storage,
					  min_t(sector_t, limit,
						diff_storage_minimum));
		mutex_unlock(&storage->lock);
		if (ret)
			goto fail_storage;
	} else {
		ret = -EINVAL;
		goto fail_storage;
	}
	ret = diff_storage_register(storage);
	if (ret)
		goto fail_storage;
	storage->events = events;
	event_queue_get(events);
	return storage;

fail_storage:
	kfree(storage);
fail_file:
	fput(file);
	return ERR_PTR(ret);
}

static void diff_storage_release(struct kref *kref)
{
	struct diff_storage *storage = container_of(kref, struct diff_storage,
						    kref);

	mutex_lock(&diff_storages_lock);
	list_del(&storage->link);
	mutex_unlock(&diff_storages_lock);
	event_queue_put(storage->events);
	fput(storage->file);
	kfree(storage);
}

void diff_storage_put(struct diff_storage *storage)
{
	kref_put(&storage->kref, diff_storage_release);
}

/*
 * Once no new copy can be bound for @storage: waits for those that were.
 * Until then a take could freeze the file system holding it, and the store
 * worker, blocked on that freeze, hold the buffers that writes the take
 * drains wait for.
 */
void diff_storage_wait_arrivals(struct diff_storage *storage)
{
	wait_event(storage->due_wq, !atomic_read(&storage->due));
}

/* Whether the storage lives on @bdev, its whole disk or its partitions. */
bool diff_storage_on_bdev(struct diff_storage *storage,
			  struct block_device *bdev)
{
	struct block_device *on = storage->bdev;

	if (!on)
		return false;
	if (on == bdev)
		return true;
	return on->bd_disk == bdev->bd_disk &&
	       (!bdev_is_partition(on) || !bdev_is_partition(bdev));
}

/*
 * Grows a file storage once less than half a growth step is free. Low
 * space is reported once, when no growth is left and less than an eighth
 * of the storage (or half a step, if smaller) is free.
 */
static void __diff_storage_check_space(struct diff_storage *storage)
{
	sector_t free = storage->capacity - storage->filled;
	struct blksnap_event_low_space data;

	if (free >= diff_storage_minimum / 2)
		return;
	if (storage->capacity < storage->limit && storage->growable &&
	    !__diff_storage_grow(storage, diff_storage_minimum / 2))
		return;
	if (storage->low_space_sent ||
	    free >= min_t(sector_t, diff_storage_minimum / 2,
			  storage->capacity / 8))
		return;
	storage->low_space_sent = true;
	data.free_sectors = free;
	data.limit_sectors = storage->limit;
	event_queue_push(storage->events, blksnap_event_code_low_space,
			 &data, sizeof(data));
}

/*
 * Hands out @count contiguous sectors, growing a file storage first when
 * it runs short, and early while free space is under half the growth step
 * so that writers rarely wait for fallocate(). -ENOSPC past the limit.
 */
int diff_storage_alloc(struct diff_storage *storage, sector_t count,
		       sector_t *sector)
{
	int ret = 0;

	mutex_lock(&storage->lock);
	if (storage->filled + count > storage->capacity)
		ret = __diff_storage_grow(storage, storage->filled + count -
					  storage->capacity);
	if (!ret) {
		*sector = storage->filled;
		storage->filled += count;
		__diff_storage_check_space(storage);
	}
	mutex_unlock(&storage->lock);
	return ret;
}
ALLOW_ERROR_INJECTION(diff_storage_alloc, ERRNO);

/*
 * Buffered and synchronous, through the file's own methods: for a file
 * that takes no direct I/O, or a range it cannot take directly.
 */
static ssize_t diff_storage_buffered(struct diff_storage *storage, bool write,
				     loff_t pos, struct iov_iter *iter)
{
	struct file *file = storage->file;
	struct kiocb kiocb;
	ssize_t ret;

	init_sync_kiocb(&kiocb, file);
	kiocb.ki_pos = pos;
	/* The slots' offsets are ours, and the page cache takes any size. */
	kiocb.ki_flags &= ~(IOCB_APPEND | IOCB_DIRECT);
	if (write) {
		file_start_write(file);
		ret = file->f_op->write_iter(&kiocb, iter);
		file_end_write(file);
	} else {
		ret = file->f_op->read_iter(&kiocb, iter);
	}
	return ret;
}

static void diff_storage_finish(struct diff_storage_io *io, ssize_t ret)
{
	if (ret == io->bytes)
		ret = 0;
	else if (ret >= 0)
		ret = -EIO;
	io->done(io, ret);
}

static void diff_storage_complete(struct kiocb *iocb, long ret)
{
	struct diff_storage_io *io = container_of(iocb, struct diff_storage_io,
						  iocb);

	if (iocb->ki_flags & IOCB_WRITE)
		kiocb_end_write(iocb);
	diff_storage_finish(io, ret);
}

/*
 * Reads or writes a file storage at @sector with the pages of @iter, which
 * must stay until @io->done is called. Direct and asynchronous where the
 * file and the alignment allow, like the loop driver: old data then
 * neither passes through the page cache nor holds up the calling worker.
 * Callers are workers that writes of the device wait on, so nothing
 * allocated here may recurse into the block layer.
 */
void diff_storage_submit(struct diff_storage *storage,
			 struct diff_storage_io *io, bool write, sector_t sector,
			 struct iov_iter *iter)
{
	struct file *file = storage->file;
	loff_t pos = (loff_t)sector << SECTOR_SHIFT;
	struct kiocb *iocb = &io->iocb;
	unsigned int noio_flags;
	struct iov_iter saved;
	ssize_t ret = -EINVAL;

	io->bytes = iov_iter_count(iter);
	noio_flags = memalloc_noio_save();
	if (storage->dio_align &&
	    !((pos | io->bytes | iov_iter_alignment(iter)) &
	      (storage->dio_align - 1))) {
		saved = *iter;
		memset(iocb, 0, sizeof(*iocb));
		iocb->ki_filp = file;
		iocb->ki_pos = pos;
		iocb->ki_flags = IOCB_DIRECT;
		iocb->ki_complete = diff_storage_complete;
		if (write) {
			iocb->ki_flags |= IOCB_WRITE;
			kiocb_start_write(iocb);
			ret = file->f_op->write_iter(iocb, iter);
		} else {
			ret = file->f_op->read_iter(iocb, iter);
		}
		if (ret == -EIOCBQUEUED)
			goto out;
		if (write)
			kiocb_end_write(iocb);
		/* Refused before any I/O: the alignment of its own choosing. */
		if (ret == -EINVAL)
			*iter = saved;
	}
	if (ret == -EINVAL)
		ret = diff_storage_buffered(storage, write, pos, iter);
	diff_storage_finish(io, ret);
out:
	memalloc_noio_restore(noio_flags);
}
