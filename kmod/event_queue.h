/* SPDX-License-Identifier: GPL-2.0 */
#ifndef __BLKSNAP_EVENT_QUEUE_H
#define __BLKSNAP_EVENT_QUEUE_H

#include <linux/kref.h>
#include <linux/list.h>
#include <linux/spinlock.h>
#include <linux/wait.h>

/**
 * struct event - One event of a snapshot.
 * @link: entry in &event_queue.list.
 * @time: when it was queued, CLOCK_MONOTONIC in ns.
 * @code: &enum blksnap_event_codes.
 * @size: bytes at @data.
 * @data: the code's structure.
 */
struct event {
	struct list_head link;
	s64 time;
	unsigned int code;
	unsigned int size;
	u8 data[];
};

/**
 * struct event_queue - Events of a snapshot, waited for by user space.
 * @kref: the snapshot, its devices' copy-on-write state and each waiter
 *	own a reference, so an event may be queued after the snapshot went.
 * @lock: guards @list and @closed.
 * @list: events not yet read.
 * @wq: waiters for an event or for @closed.
 * @closed: the snapshot was destroyed.
 */
struct event_queue {
	struct kref kref;
	spinlock_t lock; /* list and closed */
	struct list_head list;
	wait_queue_head_t wq;
	bool closed;
};

struct event_queue *event_queue_new(void);
void event_queue_get(struct event_queue *queue);
void event_queue_put(struct event_queue *queue);
void event_queue_close(struct event_queue *queue);
void event_queue_push(struct event_queue *queue, unsigned int code,
		      const void *data, unsigned int size);
struct event *event_queue_wait(struct event_queue *queue,
			       unsigned int timeout_ms);

#endif /* __BLKSNAP_EVENT_QUEUE_H */
