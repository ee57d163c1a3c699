// SPDX-License-Identifier: GPL-2.0
/* bdev_freeze()/bdev_thaw() replaced freeze_bdev()/thaw_bdev() in 6.8. */
#include <linux/blkdev.h>

int probe(struct block_device *bdev);
int probe(struct block_device *bdev)
{
	return bdev_freeze(bdev) + bdev_thaw(bdev);
}
