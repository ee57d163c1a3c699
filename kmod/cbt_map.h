/* SPDX-License-Identifier: GPL-2.0 */
#ifndef __BLKSNAP_CBT_MAP_H
#define __BLKSNAP_CBT_MAP_H

#include <linux/types.h>
#include <linux/spinlock.h>
#include <linux/uuid.h>

struct blksnap_cbtinfo;

/**
 * struct cbt_map - The change map of a tracked device.
 * @lock: guards the numbers, @generation_id and both maps' contents
 *	against a switch or reset; bios mark @write_map without it, since a
 *	take holds every write while it switches.
 * @capacity: device size in sectors when the map was made.
 * @blk_shift: log2 of the tracking block size in bytes.
 * @blk_count: number of tracking blocks, one byte each in both maps.
 * @write_map: the active map; a block's byte is @snap_number_active when
 *	the block was written since the last take.
 * @read_map: the map as it was at the last take; allocated before the
 *	first take, since most tracked devices are never snapshotted.
 * @snap_number_active: number written into @write_map now.
 * @snap_number_previous: number of the last taken snapshot.
 * @generation_id: renewed whenever the numbering restarts.
 */
struct cbt_map {
	spinlock_t lock; /* numbers, generation, map contents vs. switch */
	sector_t capacity;
	unsigned int blk_shift;
	unsigned long blk_count;
	u8 *write_map;
	u8 *read_map;
	u8 snap_number_active;
	u8 snap_number_previous;
	uuid_t generation_id;
};

struct cbt_map *cbt_map_new(sector_t capacity);
void cbt_map_free(struct cbt_map *map);
void cbt_map_mark(struct cbt_map *map, sector_t sector, sector_t count);
void cbt_map_mark_both(struct cbt_map *map, sector_t sector, sector_t count);
int cbt_map_prepare(struct cbt_map *map);
void cbt_map_switch(struct cbt_map *map);
void cbt_map_info(struct cbt_map *map, struct blksnap_cbtinfo *info);
long cbt_map_read(struct cbt_map *map, u32 offset, u32 length, u8 **out);

static inline unsigned int cbt_map_block_size(struct cbt_map *map)
{
	return 1U << map->blk_shift;
}

#endif /* __BLKSNAP_CBT_MAP_H */
