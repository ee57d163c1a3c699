/* SPDX-License-Identifier: GPL-2.0 */
#ifndef __BLKSNAP_DIFF_BUFFER_H
#define __BLKSNAP_DIFF_BUFFER_H

#include <linux/list.h>
#include <linux/spinlock.h>
#include <linux/mm_types.h>

/**
 * struct diff_buffer - Memory for one chunk's old data.
 * @link: entry in &diff_buffer_pool.free while unused.
 * @nr_pages: number of @pages.
 * @pages: order-0 pages, so a chunk never needs contiguous memory.
 */
struct diff_buffer {
	struct list_head link;
	unsigned int nr_pages;
	struct page *pages[];
};

/**
 * struct diff_buffer_pool - Buffers of one chunk size kept for reuse.
 * @lock: guards @free and @nr_free.
 * @free: unused buffers.
 * @nr_free: length of @free, at most free_diff_buffer_pool_size.
 * @nr_pages: pages per buffer.
 */
struct diff_buffer_pool {
	spinlock_t lock; /* free and nr_free */
	struct list_head free;
	unsigned int nr_free;
	unsigned int nr_pages;
};

void diff_buffer_pool_init(struct diff_buffer_pool *pool, size_t size);
void diff_buffer_pool_done(struct diff_buffer_pool *pool);
struct diff_buffer *diff_buffer_get(struct diff_buffer_pool *pool, gfp_t gfp);
void diff_buffer_put(struct diff_buffer_pool *pool, struct diff_buffer *buf);

#endif /* __BLKSNAP_DIFF_BUFFER_H */
