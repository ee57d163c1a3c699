// SPDX-License-Identifier: GPL-2.0
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt
#include <linux/error-injection.h>
#include <linux/slab.h>
#include <linux/mm.h>
#include <linux/blkdev.h>
#include "include/uapi/linux/blksnap.h"
#include "params.h"
#include "cbt_map.h"

static unsigned int cbt_map_pick_shift(sector_t capacity)
{
	u64 bytes = (u64)capacity << SECTOR_SHIFT;
	unsigned int shift = tracking_block_minimum_shift;

	while ((bytes >> shift) >= tracking_block_maximum_count &&
	       shift < tracking_block_maximum_shift)
		shift++;
	return shift;
}

struct cbt_map *cbt_map_new(sector_t capacity)
{
	struct cbt_map *map;
	u64 count;

	map = kzalloc(sizeof(*map), GFP_KERNEL);
	if (!map)
		return ERR_PTR(-ENOMEM);
	spin_lock_init(&map->lock);
	map->capacity = capacity;
	map->blk_shift = cbt_map_pick_shift(capacity);
	count = DIV_ROUND_UP_ULL((u64)capacity << SECTOR_SHIFT,
				 1ULL << map->blk_shift);
	if (!count || count > U32_MAX) {
		kfree(map);
		return ERR_PTR(count ? -EFBIG : -EINVAL);
	}
	map->blk_count = count;
	map->write_map = kvzalloc(count, GFP_KERNEL);
	if (!map->write_map) {
		cbt_map_free(map);
		return ERR_PTR(-ENOMEM);
	}
	map->snap_number_active = 1;
	uuid_gen(&map->generation_id);
	return map;
}
ALLOW_ERROR_INJECTION(cbt_map_new, ERRNO);

void cbt_map_free(struct cbt_map *map)
{
	kvfree(map->write_map);
	kvfree(map->read_map);
	kfree(map);
}

/* The blocks [*first, *last] that hold sectors [sector, sector + count). */
static bool cbt_map_range(struct cbt_map *map, sector_t sector,
			  sector_t count, unsigned long *first,
			  unsigned long *last)
{
	sector_t end;

	if (sector >= map->capacity || !count)
		return false;
	end = min(sector + count, map->capacity);
	*first = ((u64)sector << SECTOR_SHIFT) >> map->blk_shift;
	*last = (((u64)end << SECTOR_SHIFT) - 1) >> map->blk_shift;
	return true;
}

/* On the write path: no lock, and no store where the byte is already set. */
void cbt_map_mark(struct cbt_map *map, sector_t sector, sector_t count)
{
	u8 number = READ_ONCE(map->snap_number_active);
	unsigned long blk, first, last;

	if (!cbt_map_range(map, sector, count, &first, &last))
		return;
	for (blk = first; blk <= last; blk++)
		if (READ_ONCE(map->write_map[blk]) != number)
			WRITE_ONCE(map->write_map[blk], number);
}

/*
 * For changes a backup must see although they did not reach the device
 * through the filter: writes to an image, and ranges user space marks.
 */
void cbt_map_mark_both(struct cbt_map *map, sector_t sector, sector_t count)
{
	unsigned long blk, first, last;
	unsigned long flags;

	if (!cbt_map_range(map, sector, count, &first, &last))
		return;
	spin_lock_irqsave(&map->lock, flags);
	for (blk = first; blk <= last; blk++) {
		map->write_map[blk] = map->snap_number_active;
		if (map->read_map &&
		    map->read_map[blk] < map->snap_number_previous)
			map->read_map[blk] = map->snap_number_previous;
	}
	spin_unlock_irqrestore(&map->lock, flags);
}

/* Before a take's freeze window, where nothing may be allocated. */
int cbt_map_prepare(struct cbt_map *map)
{
	u8 *read_map;

	if (map->read_map)
		return 0;
	read_map = kvzalloc(map->blk_count, GFP_KERNEL);
	if (!read_map)
		return -ENOMEM;
	spin_lock_irq(&map->lock);
	map->read_map = read_map;
	spin_unlock_irq(&map->lock);
	return 0;
}

/*
 * At take, with every write to the device held. The numbers fit a byte:
 * when the active one has reached 255 the history is dropped and a new
 * generation starts, so that a consumer knows its base is gone.
 */
void cbt_map_switch(struct cbt_map *map)
{
	spin_lock_irq(&map->lock);
	if (map->snap_number_active == U8_MAX) {
		memset(map->write_map, 0, map->blk_count);
		map->snap_number_active = 1;
		uuid_gen(&map->generation_id);
		pr_info("change map generation %pUb starts\n",
			&map->generation_id);
	}
	memcpy(map->read_map, map->write_map, map->blk_count);
	map->snap_number_previous = map->snap_number_active;
	map->snap_number_active++;
	spin_unlock_irq(&map->lock);
}

void cbt_map_info(struct cbt_map *map, struct blksnap_cbtinfo *info)
{
	spin_lock_irq(&map->lock);
	info->device_capacity = (u64)map->capacity << SECTOR_SHIFT;
	info->block_size = 1U << map->blk_shift;
	info->block_count = map->blk_count;
	memcpy(info->generation_id.b, &map->generation_id, UUID_SIZE);
	info->changes_number = map->snap_number_previous;
	spin_unlock_irq(&map->lock);
}

/*
 * Copies a window of the map as of the last take into a kernel buffer,
 * set in @out (NULL when the map reads as zeros, before the first take),
 * for the caller to copy out once ctl_mutex is released: it holds it, so
 * no take rewrites @read_map meanwhile; image writes only raise bytes,
 * which a reader may or may not see. Returns the bytes of the window.
 */
long cbt_map_read(struct cbt_map *map, u32 offset, u32 length, u8 **out)
{
	unsigned long count;

	*out = NULL;
	if (offset > map->blk_count)
		return -EINVAL;
	count = min_t(unsigned long, length, map->blk_count - offset);
	if (!count || !map->read_map)
		return count;
	*out = kvmalloc(count, GFP_KERNEL);
	if (!*out)
		return -ENOMEM;
	memcpy(*out, map->read_map + offset, count);
	return count;
}
