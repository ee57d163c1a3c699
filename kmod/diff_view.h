/* SPDX-License-Identifier: GPL-2.0 */
#ifndef __BLKSNAP_DIFF_VIEW_H
#define __BLKSNAP_DIFF_VIEW_H

#include <linux/limits.h>
#include <linux/list.h>
#include <linux/types.h>
#include <linux/xarray.h>

struct chunk;
struct diff_area;
struct diff_storage;
struct event_queue;

/**
 * struct diff_view - One held snapshot of a device (see diff_area.h).
 * @link: entry in &diff_area.views.
 * @area: the device's shared copy-on-write state; the view owns a
 *	reference.
 * @storage: the snapshot's difference storage.
 * @events: the snapshot's events.
 * @seq: the take sequence of the snapshot, 0 until it is taken.
 * @error: the error that corrupted this image, 0 while it is whole;
 *	under &diff_area.lock.
 * @own: private copies of the chunks written through the image while
 *	their shared copy served other views too; filled by the image's
 *	worker only, read under &diff_area.lock.
 * @owning: the chunk whose private copy the worker is making, or
 *	DIFF_VIEW_OWNING_NONE; under &diff_area.lock. Image writes to it go
 *	to the worker even if the shared copy became the view's alone
 *	meanwhile (the other views destroyed): written there, they would be
 *	hidden by the private copy made from the old data.
 * @nr_clones: parts of the image's bios in flight, under &diff_area.lock:
 *	a destroy that leaves other views waits for them before it frees
 *	the copies they read.
 */
struct diff_view {
	struct list_head link;
	struct diff_area *area;
	struct diff_storage *storage;
	struct event_queue *events;
	u64 seq;
	int error;
	struct xarray own;
	unsigned long owning;
	unsigned int nr_clones;
};

#define DIFF_VIEW_OWNING_NONE ULONG_MAX

struct diff_view *diff_view_new(struct diff_area *area,
				struct diff_storage *storage,
				struct event_queue *events);
void diff_view_add(struct diff_view *view);
bool diff_view_remove(struct diff_view *view);
void diff_view_free(struct diff_view *view, bool trim);
int diff_view_error(struct diff_view *view);
void diff_view_corrupt(struct diff_view *view, int err);
void diff_area_corrupt_range(struct diff_area *area, u64 after, u64 last,
			     int err);
bool __diff_area_needs(struct diff_area *area, u64 after, u64 last,
		       bool whole);
struct chunk *__diff_view_copy(struct diff_view *view, unsigned long n);
bool __diff_view_sole(struct diff_view *view, struct chunk *chunk);
int diff_view_own(struct diff_view *view, unsigned long n,
		  struct chunk *shared);

#endif /* __BLKSNAP_DIFF_VIEW_H */
