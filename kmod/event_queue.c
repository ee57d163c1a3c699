// SPDX-License-Identifier: GPL-2.0
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt
#include <linux/slab.h>
#include <linux/sched.h>
#include <linux/timekeeping.h>
#include <linux/jiffies.h>
#include "event_queue.h"

struct event_queue *event_queue_new(void)
{
	struct event_queue *queue = kzalloc(sizeof(*queue), GFP_KERNEL);

	if (!queue)
		return NULL;
	kref_init(&queue->kref);
	spin_lock_init(&queue->lock);
	INIT_LIST_HEAD(&queue->list);
	init_waitqueue_head(&queue->wq);
	return queue;
}

void event_queue_get(struct event_queue *queue)
{
	kref_get(&queue->kref);
}

static void event_queue_release(struct kref *kref)
{
	struct event_queue *queue = container_of(kref, struct event_queue,
						 kref);
	struct event *event, *next;

	list_for_each_entry_safe(event, next, &queue->list, link)
		kfree(event);
	kfree(queue);
}

void event_queue_put(struct event_queue *queue)
{
	kref_put(&queue->kref, event_queue_release);
}

void event_queue_close(struct event_queue *queue)
{
	spin_lock_irq(&queue->lock);
	queue->closed = true;
	spin_unlock_irq(&queue->lock);
	wake_up_all(&queue->wq);
}

/*
 * Called from the I/O workers and from bio completion, so without
 * sleeping: an event that cannot be allocated is lost.
 */
void event_queue_push(struct event_queue *queue, unsigned int code,
		      const void *data, unsigned int size)
{
	struct event *event;
	unsigned long flags;

	event = kzalloc(struct_size(event, data, size), GFP_ATOMIC);
	if (!event)
		return;
	event->time = ktime_get_ns();
	event->code = code;
	event->size = size;
	memcpy(event->data, data, size);

	spin_lock_irqsave(&queue->lock, flags);
	list_add_tail(&event->link, &queue->list);
	spin_unlock_irqrestore(&queue->lock, flags);
	wake_up(&queue->wq);
}

static struct event *event_queue_pop(struct event_queue *queue)
{
	struct event *event;

	spin_lock_irq(&queue->lock);
	event = list_first_entry_or_null(&queue->list, struct event, link);
	if (event)
		list_del(&event->link);
	else if (queue->closed)
		event = ERR_PTR(-ENOENT);
	spin_unlock_irq(&queue->lock);
	return event;
}

/*
 * The next event, waiting for it up to @timeout_ms: ERR_PTR(-ETIMEDOUT)
 * when none came, -EINTR on a signal, -ENOENT once the snapshot is gone.
 */
struct event *event_queue_wait(struct event_queue *queue,
			       unsigned int timeout_ms)
{
	struct event *event = NULL;
	long ret;

	ret = wait_event_interruptible_timeout(queue->wq,
					       (event = event_queue_pop(queue)),
					       msecs_to_jiffies(timeout_ms));
	if (ret < 0)
		return ERR_PTR(-EINTR);
	if (!event)
		return ERR_PTR(-ETIMEDOUT);
	return event;
}
