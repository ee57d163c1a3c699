/* SPDX-License-Identifier: GPL-2.0 */
#ifndef __BLKSNAP_SNAPIMAGE_H
#define __BLKSNAP_SNAPIMAGE_H

#include <linux/bio.h>
#include <linux/spinlock.h>
#include <linux/workqueue.h>

struct diff_area;
struct gendisk;

/**
 * struct snapimage - The block device that shows a device as it was at
 *	take.
 * @disk: the image disk, /dev/blksnap-imageN.
 * @area: the device's copy-on-write state, which serves the I/O.
 * @index: N in the disk's name.
 * @added: @disk was added and must be deleted.
 * @lock: guards @queue.
 * @queue: bios waiting for @work.
 * @work: serves @queue: the image bios that wait for a chunk or use a
 *	file storage, which the submitter's context must not.
 */
struct snapimage {
	struct gendisk *disk;
	struct diff_area *area;
	int index;
	bool added;
	spinlock_t lock; /* queue */
	struct bio_list queue;
	struct work_struct work;
};

struct snapimage *snapimage_new(struct diff_area *area);
int snapimage_add(struct snapimage *image);
void snapimage_free(struct snapimage *image);
bool snapimage_is_image(struct block_device *bdev);
void snapimage_done(void);

#endif /* __BLKSNAP_SNAPIMAGE_H */
