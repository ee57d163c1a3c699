// SPDX-License-Identifier: GPL-2.0
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt
#include <linux/error-injection.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/blkdev.h>
#include <linux/idr.h>
#include "include/uapi/linux/blksnap.h"
#include "compat.h"
#include "diff_area.h"
#include "diff_view.h"
#include "snapimage.h"
#include "tracker.h"

/* Largest image bio: enough for a backup's sequential reads. */
#define SNAPIMAGE_MAX_SECTORS 4096

static DEFINE_IDA(snapimage_ida);

/* What needs no wait is sent on from here; the worker serves the rest. */
static void snapimage_serve(struct snapimage *image, struct bio *bio)
{
	unsigned long flags;

	if (!diff_area_image_start(image->view, bio) ||
	    diff_area_image_io(image->view, bio, false))
		return;
	spin_lock_irqsave(&image->lock, flags);
	bio_list_add(&image->queue, bio);
	spin_unlock_irqrestore(&image->lock, flags);
	queue_work(blksnap_wq, &image->work);
}

static void snapimage_submit_bio(struct bio *bio)
{
	struct snapimage *image = bio->bi_bdev->bd_disk->private_data;
	unsigned long flags;

	/*
	 * Added while the take drains the devices: hold bios until it ends.
	 * The acquire pairs with snapimage_go_live().
	 */
	if (unlikely(!smp_load_acquire(&image->live))) {
		spin_lock_irqsave(&image->lock, flags);
		if (!image->live) {
			bio_list_add(&image->held, bio);
			spin_unlock_irqrestore(&image->lock, flags);
			return;
		}
		spin_unlock_irqrestore(&image->lock, flags);
	}
	snapimage_serve(image, bio);
}

static const struct block_device_operations snapimage_fops = {
	.owner = THIS_MODULE,
	.submit_bio = snapimage_submit_bio,
};

static void snapimage_work_fn(struct work_struct *work)
{
	struct snapimage *image = container_of(work, struct snapimage, work);
	struct blk_plug plug;
	struct bio *bio;

	blk_start_plug(&plug);
	for (;;) {
		spin_lock_irq(&image->lock);
		bio = bio_list_pop(&image->queue);
		spin_unlock_irq(&image->lock);
		if (!bio)
			break;
		diff_area_image_io(image->view, bio, true);
	}
	blk_finish_plug(&plug);
}

static void snapimage_add_fn(struct work_struct *work)
{
	struct snapimage *image = container_of(work, struct snapimage,
					       add_work);

	image->add_ret = add_disk(image->disk);
	image->added = !image->add_ret;
}

struct snapimage *snapimage_new(struct diff_view *view)
{
	struct diff_area *area = view->area;
	struct block_device *bdev = area->bdev;
	struct snapimage *image;
	struct gendisk *disk;
	int ret;

	image = kzalloc(sizeof(*image), GFP_KERNEL);
	if (!image)
		return ERR_PTR(-ENOMEM);
	spin_lock_init(&image->lock);
	bio_list_init(&image->queue);
	bio_list_init(&image->held);
	INIT_WORK(&image->work, snapimage_work_fn);
	INIT_WORK(&image->add_work, snapimage_add_fn);

	ret = ida_alloc(&snapimage_ida, GFP_KERNEL);
	if (ret < 0)
		goto fail_ida;
	image->index = ret;

	disk = blksnap_alloc_disk(bdev_logical_block_size(bdev),
				  bdev_physical_block_size(bdev),
				  SNAPIMAGE_MAX_SECTORS);
	if (IS_ERR(disk)) {
		ret = PTR_ERR(disk);
		goto fail_disk;
	}
	image->disk = disk;
	disk->fops = &snapimage_fops;
	disk->private_data = image;
	disk->flags |= GENHD_FL_NO_PART;
	snprintf(disk->disk_name, DISK_NAME_LEN, "%s%d", BLKSNAP_IMAGE_NAME,
		 image->index);
	set_capacity(disk, area->capacity);

	diff_area_get(area);
	image->area = area;
	image->view = view;
	return image;

fail_disk:
	ida_free(&snapimage_ida, image->index);
fail_ida:
	kfree(image);
	return ERR_PTR(ret);
}
ALLOW_ERROR_INJECTION(snapimage_new, ERRNO);

/*
 * Adds the disk from a worker, so that its few milliseconds overlap the
 * take's drain instead of following it. Nothing here waits for the
 * devices being snapshotted.
 */
void snapimage_add_start(struct snapimage *image)
{
	queue_work(system_unbound_wq, &image->add_work);
}

int snapimage_add_wait(struct snapimage *image)
{
	flush_work(&image->add_work);
	if (image->add_ret)
		pr_err("cannot add %s: %d\n", image->disk->disk_name,
		       image->add_ret);
	return image->add_ret;
}

/* The snapshot is taken: serve the bios held so far and all after. */
void snapimage_go_live(struct snapimage *image)
{
	struct bio_list held;
	struct bio *bio;

	spin_lock_irq(&image->lock);
	held = image->held;
	bio_list_init(&image->held);
	/* Pairs with the submitter's acquire: the drain came before. */
	smp_store_release(&image->live, true);
	spin_unlock_irq(&image->lock);
	while ((bio = bio_list_pop(&held)))
		snapimage_serve(image, bio);
}

/*
 * After del_gendisk() no new bio enters; bios held by a take that failed
 * fail, and the worker finishes the queued ones, which fail once the
 * snapshot is gone.
 */
void snapimage_free(struct snapimage *image)
{
	struct bio *bio;

	flush_work(&image->add_work);
	if (image->added)
		del_gendisk(image->disk);
	while ((bio = bio_list_pop(&image->held))) {
		bio->bi_status = BLK_STS_IOERR;
		bio_endio(bio);
	}
	flush_work(&image->work);
	put_disk(image->disk);
	ida_free(&snapimage_ida, image->index);
	diff_area_put(image->area);
	kfree(image);
}

bool snapimage_is_image(struct block_device *bdev)
{
	return bdev->bd_disk->fops == &snapimage_fops;
}

void snapimage_done(void)
{
	ida_destroy(&snapimage_ida);
}
