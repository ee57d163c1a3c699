/* SPDX-License-Identifier: GPL-2.0 */
#ifndef __BLKSNAP_CHUNK_H
#define __BLKSNAP_CHUNK_H

#include <linux/bio.h>
#include <linux/list.h>
#include <linux/llist.h>

struct diff_area;
struct diff_buffer;
struct diff_storage;

/**
 * enum chunk_state - Where a chunk's old data is.
 * @CHUNK_LOADING: being read from the original device; writes to the
 *	chunk wait in &chunk.waiting.
 * @CHUNK_STORING: in &chunk.buf, queued for or being written to the
 *	difference storage; writes to the chunk pass.
 * @CHUNK_STORED: in the difference storage at &chunk.storage_sector.
 * @CHUNK_FAILED: lost; the image is corrupted.
 */
enum chunk_state {
	CHUNK_LOADING,
	CHUNK_STORING,
	CHUNK_STORED,
	CHUNK_FAILED,
};

/**
 * struct chunk - One copy of a chunk of a device.
 *
 * Copies are made on the first write to a chunk after the newest take
 * that a view needs, or as a view's private copy, and live until no view
 * reads them. Everything but @buf, @loads and @load_status is guarded by
 * &diff_area.lock.
 *
 * @link: entry in the store queue, a store batch, or a parked list.
 * @llnode: entry in &diff_area.loaded, pushed from bio completion.
 * @area: the device's copy-on-write state.
 * @number: index of the chunk.
 * @state: &enum chunk_state.
 * @waiting: writes to the original device held until the old data is in.
 * @loads: reads of the old data still in flight, built before submission
 *	so that nothing is allocated once the chunk is published.
 * @pending: bios of @loads not yet completed.
 * @load_status: first error of those reads.
 * @buf: the old data while in memory; only the load and store paths use
 *	it.
 * @storage_sector: where the old data is, once stored.
 * @seq: the take sequence the copy was made under (see diff_area.h).
 * @older: the next older copy of the chunk, or NULL.
 * @storage: the difference storage it goes to; the copy owns a reference.
 */
struct chunk {
	struct list_head link;
	struct llist_node llnode;
	struct diff_area *area;
	unsigned long number;
	enum chunk_state state;
	struct bio_list waiting;
	struct bio_list loads;
	atomic_t pending;
	blk_status_t load_status;
	struct diff_buffer *buf;
	sector_t storage_sector;
	u64 seq;
	struct chunk *older;
	struct diff_storage *storage;
};

struct chunk *chunk_new(struct diff_area *area, unsigned long number,
			gfp_t gfp);
void chunk_free(struct chunk *chunk);
void chunk_set_storage(struct chunk *chunk, struct diff_storage *storage);
struct diff_buffer *chunk_take_buf(struct chunk *chunk);
void chunk_load(struct chunk *chunk);

#endif /* __BLKSNAP_CHUNK_H */
