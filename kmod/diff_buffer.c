// SPDX-License-Identifier: GPL-2.0
#include <linux/error-injection.h>
#include <linux/slab.h>
#include <linux/gfp.h>
#include <linux/mm.h>
#include "params.h"
#include "diff_buffer.h"

void diff_buffer_pool_init(struct diff_buffer_pool *pool, size_t size)
{
	spin_lock_init(&pool->lock);
	INIT_LIST_HEAD(&pool->free);
	pool->nr_free = 0;
	pool->nr_pages = DIV_ROUND_UP(size, PAGE_SIZE);
}

static void diff_buffer_free(struct diff_buffer *buf)
{
	unsigned int i;

	for (i = 0; i < buf->nr_pages; i++)
		if (buf->pages[i])
			__free_page(buf->pages[i]);
	kvfree(buf);
}

void diff_buffer_pool_done(struct diff_buffer_pool *pool)
{
	struct diff_buffer *buf, *next;

	list_for_each_entry_safe(buf, next, &pool->free, link)
		diff_buffer_free(buf);
	INIT_LIST_HEAD(&pool->free);
	pool->nr_free = 0;
}

struct diff_buffer *diff_buffer_get(struct diff_buffer_pool *pool, gfp_t gfp)
{
	struct diff_buffer *buf;
	unsigned int i;

	spin_lock(&pool->lock);
	buf = list_first_entry_or_null(&pool->free, struct diff_buffer, link);
	if (buf) {
		list_del(&buf->link);
		pool->nr_free--;
	}
	spin_unlock(&pool->lock);
	if (buf)
		return buf;

	buf = kvzalloc(struct_size(buf, pages, pool->nr_pages), gfp);
	if (!buf)
		return NULL;
	buf->nr_pages = pool->nr_pages;
	for (i = 0; i < buf->nr_pages; i++) {
		buf->pages[i] = alloc_page(gfp);
		if (!buf->pages[i]) {
			diff_buffer_free(buf);
			return NULL;
		}
	}
	return buf;
}
ALLOW_ERROR_INJECTION(diff_buffer_get, NULL);

void diff_buffer_put(struct diff_buffer_pool *pool, struct diff_buffer *buf)
{
	spin_lock(&pool->lock);
	if (pool->nr_free < free_diff_buffer_pool_size) {
		list_add(&buf->link, &pool->free);
		pool->nr_free++;
		buf = NULL;
	}
	spin_unlock(&pool->lock);
	if (buf)
		diff_buffer_free(buf);
}
