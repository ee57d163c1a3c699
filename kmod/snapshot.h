/* SPDX-License-Identifier: GPL-2.0 */
#ifndef __BLKSNAP_SNAPSHOT_H
#define __BLKSNAP_SNAPSHOT_H

#include <linux/list.h>
#include <linux/uuid.h>

struct diff_storage;
struct event_queue;
struct tracker;
struct blksnap_snapshotinfo;
struct blksnap_snapshotinfo_of;

/**
 * struct snapshot - A set of devices captured at one instant.
 *
 * All fields are guarded by ctl_mutex.
 *
 * @link: entry in the list of snapshots.
 * @id: the snapshot's id.
 * @storage: the difference storage all its devices share.
 * @events: events for user space.
 * @devices: &struct snapshot_device entries, in the order added.
 * @taken: the images exist.
 */
struct snapshot {
	struct list_head link;
	uuid_t id;
	struct diff_storage *storage;
	struct event_queue *events;
	struct list_head devices;
	bool taken;
};

int snapshot_create(unsigned int fd, sector_t limit, uuid_t *id);
int snapshot_destroy(const uuid_t *id);
int snapshot_take(const uuid_t *id);
int snapshot_add(const uuid_t *id, struct tracker *tracker);
unsigned int snapshot_count(void);
void snapshot_collect(uuid_t *ids, unsigned int count);
struct event_queue *snapshot_get_events(const uuid_t *id);
void snapshot_info(struct tracker *tracker, struct blksnap_snapshotinfo *info);
int snapshot_info_of(const uuid_t *id, struct tracker *tracker,
		     struct blksnap_snapshotinfo_of *info);

#endif /* __BLKSNAP_SNAPSHOT_H */
