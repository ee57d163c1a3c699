/* SPDX-License-Identifier: GPL-2.0 */
#ifndef __BLKSNAP_SNAPIMAGE_H
#define __BLKSNAP_SNAPIMAGE_H

#include <linux/bio.h>
#include <linux/spinlock.h>
#include <linux/workqueue.h>

struct diff_area;
struct diff_view;
struct gendisk;

/**
 * struct snapimage - The block device that shows a device as it was at
 *	take.
 * @disk: the image disk, /dev/blksnap-imageN.
 * @view: the snapshot of the device, which serves the I/O.
 * @area: the device's copy-on-write state; the image owns a reference.
 * @index: N in the disk's name.
 * @added: @disk was added and must be deleted.
 * @live: the snapshot is taken; until then bios wait in @held.
 * @lock: guards @queue, @held and the setting of @live.
 * @queue: bios waiting for @work.
 * @held: bios that came before the take ended.
 * @work: serves @queue: the image bios that wait for a chunk or use a
 *	file storage, which the submitter's context must not.
 * @add_work: adds @disk during the take.
 * @add_ret: what add_disk() returned.
 */
struct snapimage {
	struct gendisk *disk;
	struct diff_view *view;
	struct diff_area *area;
	int index;
	bool added;
	bool live;
	spinlock_t lock; /* queue, held, live */
	struct bio_list queue;
	struct bio_list held;
	struct work_struct work;
	struct work_struct add_work;
	int add_ret;
};

struct snapimage *snapimage_new(struct diff_view *view);
void snapimage_add_start(struct snapimage *image);
int snapimage_add_wait(struct snapimage *image);
void snapimage_go_live(struct snapimage *image);
void snapimage_free(struct snapimage *image);
bool snapimage_is_image(struct block_device *bdev);
void snapimage_done(void);

#endif /* __BLKSNAP_SNAPIMAGE_H */
