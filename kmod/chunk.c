// SPDX-License-Identifier: GPL-2.0
#include <linux/error-injection.h>
#include <linux/slab.h>
#include <linux/blkdev.h>
#include "chunk.h"
#include "diff_area.h"
#include "hook.h"
#include "diff_buffer.h"
#include "diff_storage.h"

static void chunk_load_endio(struct bio *bio)
{
	struct chunk *chunk = bio->bi_private;

	if (bio->bi_status)
		WRITE_ONCE(chunk->load_status, bio->bi_status);
	bio_put(bio);
	if (atomic_dec_and_test(&chunk->pending))
		diff_area_chunk_loaded(chunk);
}

/* Reads of the chunk's part of the device, clipped at its end. */
static noinline int chunk_build_loads(struct chunk *chunk, gfp_t gfp)
{
	struct diff_area *area = chunk->area;
	sector_t sector = (sector_t)chunk->number << area->chunk_shift;
	sector_t end = min(sector + (1ULL << area->chunk_shift),
			   area->capacity);
	unsigned int page = 0;

	while (sector < end) {
		unsigned int nr = min_t(unsigned int, BIO_MAX_VECS,
					DIV_ROUND_UP((end - sector) <<
						     SECTOR_SHIFT, PAGE_SIZE));
		struct bio *bio;

		bio = bio_alloc_bioset(area->bdev, nr, REQ_OP_READ, gfp,
				       &area->load_bs);
		if (!bio)
			return -ENOMEM;
		bio->bi_iter.bi_sector = sector;
		bio->bi_end_io = chunk_load_endio;
		bio->bi_private = chunk;
		while (nr--) {
			unsigned int len = min_t(sector_t, PAGE_SIZE,
						 (end - sector) << SECTOR_SHIFT);

			__bio_add_page(bio, chunk->buf->pages[page++], len, 0);
			sector += len >> SECTOR_SHIFT;
		}
		bio_list_add(&chunk->loads, bio);
		atomic_inc(&chunk->pending);
	}
	return 0;
}
ALLOW_ERROR_INJECTION(chunk_build_loads, ERRNO);

struct chunk *chunk_new(struct diff_area *area, unsigned long number,
			gfp_t gfp)
{
	struct chunk *chunk;

	chunk = kzalloc(sizeof(*chunk), gfp);
	if (!chunk)
		return NULL;
	INIT_LIST_HEAD(&chunk->link);
	chunk->area = area;
	chunk->number = number;
	chunk->state = CHUNK_LOADING;
	bio_list_init(&chunk->waiting);
	bio_list_init(&chunk->loads);
	atomic_set(&chunk->pending, 0);
	chunk->buf = diff_buffer_get(&area->pool, gfp);
	if (!chunk->buf || chunk_build_loads(chunk, gfp)) {
		chunk_free(chunk);
		return NULL;
	}
	return chunk;
}
ALLOW_ERROR_INJECTION(chunk_new, NULL);

void chunk_free(struct chunk *chunk)
{
	struct diff_buffer *buf;
	struct bio *bio;

	while ((bio = bio_list_pop(&chunk->loads)))
		bio_put(bio);
	buf = chunk_take_buf(chunk);
	if (buf)
		diff_buffer_put(&chunk->area->pool, buf);
	if (chunk->storage) {
		if (chunk->state == CHUNK_STORED)
			diff_storage_unuse(chunk->storage,
					   1ULL << chunk->area->chunk_shift);
		diff_storage_put(chunk->storage);
	}
	kfree(chunk);
}

/*
 * Where the copy goes; under &diff_area.lock, so no sleep. A copy not yet
 * written (it holds its buffer) is due there; one moved is due no more
 * where it was, and the caller drops its reference to that storage.
 */
void chunk_set_storage(struct chunk *chunk, struct diff_storage *storage)
{
	diff_storage_get(storage);
	if (chunk->buf) {
		if (chunk->storage)
			diff_storage_arrived(chunk->storage);
		diff_storage_due(storage);
	}
	chunk->storage = storage;
}

/* The copy's buffer goes: it is written, failed or dropped. */
struct diff_buffer *chunk_take_buf(struct chunk *chunk)
{
	struct diff_buffer *buf = chunk->buf;

	chunk->buf = NULL;
	if (buf && chunk->storage)
		diff_storage_arrived(chunk->storage);
	return buf;
}

void chunk_load(struct chunk *chunk)
{
	struct bio *bio;

	while ((bio = bio_list_pop(&chunk->loads)))
		hook_pass_bio(bio);
}
