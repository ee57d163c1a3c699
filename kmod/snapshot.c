// SPDX-License-Identifier: GPL-2.0
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/blkdev.h>
#include <linux/blk-mq.h>
#include "include/uapi/linux/blksnap.h"
#include "compat.h"
#include "cbt_map.h"
#include "diff_area.h"
#include "diff_storage.h"
#include "diff_view.h"
#include "params.h"
#include "event_queue.h"
#include "snapimage.h"
#include "snapshot.h"
#include "tracker.h"

/**
 * struct snapshot_device - A device of a snapshot.
 * @link: entry in &snapshot.devices.
 * @tracker: the device.
 * @area: its copy-on-write state, from take on.
 * @view: the snapshot's view of it, from take on.
 * @image: its image, from take on.
 * @shared: @area served held snapshots of the device before this take.
 * @last: the release took the area's last view.
 */
struct snapshot_device {
	struct list_head link;
	struct tracker *tracker;
	struct diff_area *area;
	struct diff_view *view;
	struct snapimage *image;
	bool shared;
	bool last;
};

/* Under ctl_mutex. */
static LIST_HEAD(snapshots);

static struct snapshot *snapshot_find(const uuid_t *id)
{
	struct snapshot *snapshot;

	lockdep_assert_held(&ctl_mutex);
	list_for_each_entry(snapshot, &snapshots, link)
		if (uuid_equal(&snapshot->id, id))
			return snapshot;
	return NULL;
}

int snapshot_create(unsigned int fd, sector_t limit, uuid_t *id)
{
	struct snapshot *snapshot;
	int ret;

	lockdep_assert_held(&ctl_mutex);
	snapshot = kzalloc(sizeof(*snapshot), GFP_KERNEL);
	if (!snapshot)
		return -ENOMEM;
	INIT_LIST_HEAD(&snapshot->devices);
	snapshot->events = event_queue_new();
	if (!snapshot->events) {
		ret = -ENOMEM;
		goto fail_events;
	}
	snapshot->storage = diff_storage_new(fd, limit, snapshot->events);
	if (IS_ERR(snapshot->storage)) {
		ret = PTR_ERR(snapshot->storage);
		goto fail_storage;
	}
	uuid_gen(&snapshot->id);
	list_add_tail(&snapshot->link, &snapshots);
	*id = snapshot->id;
	__module_get(THIS_MODULE);
	return 0;

fail_storage:
	event_queue_put(snapshot->events);
fail_events:
	kfree(snapshot);
	return ret;
}

/*
 * Undoes a take, or tears the taken state down on destroy: images first,
 * so no image I/O is left, then the areas once no write can reach them.
 */
static void snapshot_release_devices(struct snapshot *snapshot)
{
	struct snapshot_device *sd;

	list_for_each_entry(sd, &snapshot->devices, link) {
		if (sd->image) {
			snapimage_free(sd->image);
			sd->image = NULL;
		}
		if (!sd->area)
			continue;
		sd->last = sd->view ? diff_view_remove(sd->view) : !sd->shared;
		if (sd->last)
			tracker_set_diff_area(sd->tracker, NULL);
	}
	list_for_each_entry(sd, &snapshot->devices, link)
		if (sd->area && sd->last)
			tracker_sync(sd->tracker);
	list_for_each_entry(sd, &snapshot->devices, link) {
		if (!sd->area)
			continue;
		if (sd->last)
			diff_area_stop(sd->area);
		if (sd->view)
			diff_view_free(sd->view, !sd->last);
		sd->view = NULL;
		diff_area_put(sd->area);
		sd->area = NULL;
		sd->shared = false;
	}
	snapshot->taken = false;
}

int snapshot_destroy(const uuid_t *id)
{
	struct snapshot_device *sd, *next;
	struct snapshot *snapshot;

	lockdep_assert_held(&ctl_mutex);
	snapshot = snapshot_find(id);
	if (!snapshot)
		return -ENOENT;
	list_del(&snapshot->link);
	snapshot_release_devices(snapshot);
	list_for_each_entry_safe(sd, next, &snapshot->devices, link) {
		sd->tracker->nr_snapshots--;
		tracker_put(sd->tracker);
		list_del(&sd->link);
		kfree(sd);
	}
	event_queue_close(snapshot->events);
	event_queue_put(snapshot->events);
	/* Copies the older snapshots still read may be bound for it. */
	diff_storage_wait_arrivals(snapshot->storage);
	diff_storage_put(snapshot->storage);
	kfree(snapshot);
	module_put(THIS_MODULE);
	return 0;
}

static struct snapshot_device *snapshot_device_of(struct snapshot *snapshot,
						  struct tracker *tracker)
{
	struct snapshot_device *sd;

	list_for_each_entry(sd, &snapshot->devices, link)
		if (sd->tracker == tracker)
			return sd;
	return NULL;
}

int snapshot_add(const uuid_t *id, struct tracker *tracker)
{
	struct snapshot_device *sd;
	struct snapshot *snapshot;

	lockdep_assert_held(&ctl_mutex);
	snapshot = snapshot_find(id);
	if (!snapshot)
		return -ENOENT;
	if (snapshot->taken || snapshot_device_of(snapshot, tracker) ||
	    tracker->nr_snapshots >= snapshots_per_device_maximum)
		return -EBUSY;
	if (diff_storage_on_bdev(snapshot->storage, tracker->bdev))
		return -EINVAL;
	sd = kzalloc(sizeof(*sd), GFP_KERNEL);
	if (!sd)
		return -ENOMEM;
	sd->tracker = tracker_get(tracker);
	tracker->nr_snapshots++;
	list_add_tail(&sd->link, &snapshot->devices);
	return 0;
}

/*
 * Whether a held snapshot of a device of the take keeps its storage on a
 * device of the take. Copies for the held snapshots go there, new ones
 * too when the new storage fills up; the take waits for copies in
 * flight while it freezes that device, so it could wait forever. A
 * destroyed snapshot's storage is no such risk: its destroy waited for
 * the copies bound for it, and none are bound for it since.
 */
static bool snapshot_storage_in_take(struct snapshot *snapshot)
{
	struct snapshot_device *sd, *on;
	struct diff_area *area;
	struct diff_view *view;
	bool found = false;

	list_for_each_entry(sd, &snapshot->devices, link) {
		area = tracker_diff_area(sd->tracker);
		if (!area)
			continue;
		mutex_lock(&area->views_mutex);
		list_for_each_entry(view, &area->views, link)
			list_for_each_entry(on, &snapshot->devices, link)
				found |= diff_storage_on_bdev(view->storage,
							      on->tracker->bdev);
		mutex_unlock(&area->views_mutex);
	}
	return found;
}

static int snapshot_prepare(struct snapshot *snapshot)
{
	struct snapshot_device *sd;
	int ret;

	list_for_each_entry(sd, &snapshot->devices, link) {
		if (tracker_dead(sd->tracker))
			return -ENODEV;
		ret = cbt_map_prepare(sd->tracker->cbt_map);
		if (ret)
			return ret;
		/* Held snapshots of the device share their area with it. */
		sd->area = tracker_diff_area(sd->tracker);
		if (sd->area) {
			ret = diff_area_error(sd->area);
			if (ret) {
				sd->area = NULL;
				return ret;
			}
			diff_area_get(sd->area);
			sd->shared = true;
		} else {
			sd->area = diff_area_new(sd->tracker);
			if (IS_ERR(sd->area)) {
				ret = PTR_ERR(sd->area);
				sd->area = NULL;
				return ret;
			}
		}
		sd->view = diff_view_new(sd->area, snapshot->storage,
					 snapshot->events);
		if (IS_ERR(sd->view)) {
			ret = PTR_ERR(sd->view);
			sd->view = NULL;
			return ret;
		}
		sd->image = snapimage_new(sd->view);
		if (IS_ERR(sd->image)) {
			ret = PTR_ERR(sd->image);
			sd->image = NULL;
			return ret;
		}
	}
	return 0;
}

static void snapshot_thaw(struct snapshot *snapshot,
			  struct snapshot_device *last)
{
	struct snapshot_device *sd;

	list_for_each_entry(sd, &snapshot->devices, link) {
		if (sd == last)
			break;
		blksnap_bdev_thaw(sd->tracker->bdev);
	}
}

/*
 * The instant of the snapshot: file systems on the devices are frozen,
 * then every write to them is held at the filter, the writes already past
 * it are drained from their queues, and the change maps and
 * copy-on-write states are switched together before anything is let go.
 */
static int snapshot_switch(struct snapshot *snapshot)
{
	struct snapshot_device *sd;
	int ret;

	list_for_each_entry(sd, &snapshot->devices, link) {
		ret = blksnap_bdev_freeze(sd->tracker->bdev);
		if (ret) {
			snapshot_thaw(snapshot, sd);
			return ret;
		}
	}
	list_for_each_entry(sd, &snapshot->devices, link)
		tracker_freeze(sd->tracker);
	list_for_each_entry(sd, &snapshot->devices, link)
		tracker_sync(sd->tracker);
	list_for_each_entry(sd, &snapshot->devices, link)
		if (sd->shared)
			diff_area_quiesce(sd->area);
	/* Drain all queues at once: start every freeze, then wait. */
	list_for_each_entry(sd, &snapshot->devices, link)
		blk_freeze_queue_start(bdev_get_queue(sd->tracker->bdev));
	list_for_each_entry(sd, &snapshot->devices, link) {
		struct request_queue *q = bdev_get_queue(sd->tracker->bdev);

		blk_mq_freeze_queue_wait(q);
		blk_mq_unfreeze_queue(q);
	}
	list_for_each_entry(sd, &snapshot->devices, link) {
		cbt_map_switch(sd->tracker->cbt_map);
		diff_view_add(sd->view);
		if (!sd->shared && tracker_set_diff_area(sd->tracker, sd->area))
			diff_area_corrupt(sd->area, -ENODEV);
	}
	snapshot->taken = true;
	list_for_each_entry(sd, &snapshot->devices, link)
		tracker_unfreeze(sd->tracker);
	snapshot_thaw(snapshot, NULL);
	return 0;
}

int snapshot_take(const uuid_t *id)
{
	struct snapshot_device *sd;
	struct snapshot *snapshot;
	int ret;

	lockdep_assert_held(&ctl_mutex);
	snapshot = snapshot_find(id);
	if (!snapshot)
		return -ENOENT;
	if (snapshot->taken)
		return -EALREADY;
	if (list_empty(&snapshot->devices))
		return -ENODEV;
	if (snapshot_storage_in_take(snapshot))
		return -EBUSY;

	ret = snapshot_prepare(snapshot);
	if (ret)
		goto fail;
	list_for_each_entry(sd, &snapshot->devices, link)
		snapimage_add_start(sd->image);
	ret = snapshot_switch(snapshot);
	if (ret)
		goto fail;
	list_for_each_entry(sd, &snapshot->devices, link)
		snapimage_go_live(sd->image);
	list_for_each_entry(sd, &snapshot->devices, link) {
		ret = snapimage_add_wait(sd->image);
		if (ret)
			goto fail;
	}
	list_for_each_entry(sd, &snapshot->devices, link)
		pr_info("snapshot of %pg taken as %s\n", sd->tracker->bdev,
			sd->image->disk->disk_name);
	return 0;
fail:
	snapshot_release_devices(snapshot);
	return ret;
}

unsigned int snapshot_count(void)
{
	struct snapshot *snapshot;
	unsigned int n = 0;

	lockdep_assert_held(&ctl_mutex);
	list_for_each_entry(snapshot, &snapshots, link)
		n++;
	return n;
}

/* Fills @ids with the ids of the snapshot_count() snapshots, @count at most. */
void snapshot_collect(uuid_t *ids, unsigned int count)
{
	struct snapshot *snapshot;
	unsigned int n = 0;

	lockdep_assert_held(&ctl_mutex);
	list_for_each_entry(snapshot, &snapshots, link) {
		if (n == count)
			break;
		ids[n++] = snapshot->id;
	}
}

struct event_queue *snapshot_get_events(const uuid_t *id)
{
	struct snapshot *snapshot;

	lockdep_assert_held(&ctl_mutex);
	snapshot = snapshot_find(id);
	if (!snapshot)
		return NULL;
	event_queue_get(snapshot->events);
	return snapshot->events;
}

static void snapshot_device_info(struct snapshot_device *sd,
				 struct blksnap_snapshotinfo *info)
{
	memset(info, 0, sizeof(*info));
	if (!sd || !sd->view || !sd->image)
		return;
	info->error_code = diff_view_error(sd->view);
	strscpy((char *)info->image, sd->image->disk->disk_name,
		sizeof(info->image));
}

/* The device's newest taken snapshot, as version 1.0 callers know it. */
void snapshot_info(struct tracker *tracker, struct blksnap_snapshotinfo *info)
{
	struct snapshot_device *sd, *newest = NULL;
	struct snapshot *snapshot;

	lockdep_assert_held(&ctl_mutex);
	list_for_each_entry(snapshot, &snapshots, link) {
		sd = snapshot_device_of(snapshot, tracker);
		if (sd && sd->view && sd->image && snapshot->taken &&
		    (!newest || sd->view->seq > newest->view->seq))
			newest = sd;
	}
	snapshot_device_info(newest, info);
}

/*
 * The device's state in snapshot @id (@info->id); -ENOENT unless it is
 * in it.
 */
int snapshot_info_of(const uuid_t *id, struct tracker *tracker,
		     struct blksnap_snapshotinfo_of *info)
{
	struct snapshot *snapshot;
	struct snapshot_device *sd;
	struct blksnap_uuid in = info->id;

	lockdep_assert_held(&ctl_mutex);
	snapshot = snapshot_find(id);
	sd = snapshot ? snapshot_device_of(snapshot, tracker) : NULL;
	if (!sd)
		return -ENOENT;
	memset(info, 0, sizeof(*info));
	info->id = in;
	snapshot_device_info(snapshot->taken ? sd : NULL, &info->info);
	info->storage_used_sect = atomic64_read(&snapshot->storage->used);
	mutex_lock(&snapshot->storage->lock);
	info->storage_filled_sect = snapshot->storage->filled;
	mutex_unlock(&snapshot->storage->lock);
	return 0;
}
