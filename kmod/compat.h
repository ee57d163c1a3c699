/* SPDX-License-Identifier: GPL-2.0 */
#ifndef __BLKSNAP_COMPAT_H
#define __BLKSNAP_COMPAT_H
/*
 * The block layer and ftrace interfaces that differ between the kernels
 * the module supports. Each switch is fed by a compile probe in probes/
 * (see the Makefile), never by a version number.
 */
#include <linux/blkdev.h>
#include <linux/ftrace.h>
#include <linux/fs.h>
#include "compat_probes.h"

static inline int blksnap_bdev_freeze(struct block_device *bdev)
{
#ifdef BLKSNAP_HAVE_BDEV_FREEZE
	return bdev_freeze(bdev);
#else
	return freeze_bdev(bdev);
#endif
}

static inline void blksnap_bdev_thaw(struct block_device *bdev)
{
#ifdef BLKSNAP_HAVE_BDEV_FREEZE
	bdev_thaw(bdev);
#else
	thaw_bdev(bdev);
#endif
}

/* A bio-based disk with the given block sizes and largest bio. */
static inline struct gendisk *blksnap_alloc_disk(unsigned int lbs,
						 unsigned int pbs,
						 unsigned int max_sectors)
{
#ifdef BLKSNAP_HAVE_BLK_ALLOC_DISK_LIM
	struct queue_limits lim = {
		.logical_block_size = lbs,
		.physical_block_size = pbs,
		.max_hw_sectors = max_sectors,
	};

	return blk_alloc_disk(&lim, NUMA_NO_NODE);
#else
	struct gendisk *disk = blk_alloc_disk(NUMA_NO_NODE);

	if (!disk)
		return ERR_PTR(-ENOMEM);
	blk_queue_logical_block_size(disk->queue, lbs);
	blk_queue_physical_block_size(disk->queue, pbs);
	blk_queue_max_hw_sectors(disk->queue, max_sectors);
	return disk;
#endif
}

/* Whether a block device file holds its device exclusively (O_EXCL). */
static inline bool blksnap_bdev_file_exclusive(struct file *file)
{
#ifdef FMODE_EXCL
	return file->f_mode & FMODE_EXCL;
#else
	/* do_dentry_open() clears O_EXCL; blkdev_open() marks it here. */
	return file->private_data;
#endif
}

#if defined(CONFIG_DYNAMIC_FTRACE_WITH_ARGS) || \
	defined(CONFIG_DYNAMIC_FTRACE_WITH_REGS)
#define BLKSNAP_HAVE_FTRACE_IPMODIFY 1

#ifdef CONFIG_DYNAMIC_FTRACE_WITH_ARGS
#define BLKSNAP_FTRACE_FLAGS FTRACE_OPS_FL_IPMODIFY
#else
#define BLKSNAP_FTRACE_FLAGS (FTRACE_OPS_FL_IPMODIFY | FTRACE_OPS_FL_SAVE_REGS)
#endif

static __always_inline void blksnap_ftrace_set_ip(struct ftrace_regs *fregs,
						  unsigned long ip)
{
#if defined(BLKSNAP_HAVE_FTRACE_REGS_SET_IP)
	ftrace_regs_set_instruction_pointer(fregs, ip);
#elif defined(CONFIG_DYNAMIC_FTRACE_WITH_ARGS)
	ftrace_instruction_pointer_set(fregs, ip);
#else
	instruction_pointer_set(ftrace_get_regs(fregs), ip);
#endif
}

/* The traced call's first argument, where the saved registers tell it. */
#if defined(BLKSNAP_HAVE_FTRACE_REGS_GET_ARGUMENT)
#define BLKSNAP_HAVE_FTRACE_ARG0 1
#define blksnap_ftrace_arg0(fregs) ftrace_regs_get_argument(fregs, 0)
#elif defined(CONFIG_X86_64) && defined(CONFIG_DYNAMIC_FTRACE_WITH_ARGS)
/* Before 6.5 x86 kept the argument registers in a pt_regs it shared. */
#define BLKSNAP_HAVE_FTRACE_ARG0 1
#define blksnap_ftrace_arg0(fregs) regs_get_kernel_argument(&(fregs)->regs, 0)
#endif
#endif

#endif /* __BLKSNAP_COMPAT_H */
