/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * blksnap: block device snapshots and changed block tracking for stock
 * kernels.
 *
 * The snapshot commands and the payloads of the per-device commands keep
 * the numbers and layouts of the blksnap v6 interface. Stock kernels have
 * no BLKFILTER_* block device ioctls, so the per-device commands (attach,
 * detach and the former BLKFILTER_CTL commands) go through the control
 * device as well and name their device by an open file descriptor.
 *
 * Differences from v6, all on the side of the data flow being explicit:
 * COLLECT and WAIT_EVENT read their argument and write it back, so they are
 * _IOWR; WAIT_EVENT returns -ETIMEDOUT when no event came in time.
 *
 * The structures keep v6's layouts, implicit padding included, so they
 * are laid out for 64-bit user space; the kernel zeroes padding it copies
 * out.
 *
 * Version 1.1: a device may be in up to snapshots_per_device_maximum
 * snapshots at once (module parameter, default 16), taken at different
 * moments and destroyed in any order; a chunk written after the newest
 * take is copied once for all of them. blkfilter_ctl_blksnap_snapshotinfo
 * reports the device's newest taken snapshot; the new
 * blkfilter_ctl_blksnap_snapshotinfo_of names the snapshot.
 */
#ifndef _UAPI_LINUX_BLKSNAP_H
#define _UAPI_LINUX_BLKSNAP_H

#include <linux/types.h>
#include <linux/ioctl.h>

#define BLKSNAP_CTL "blksnap-control"
#define BLKSNAP_IMAGE_NAME "blksnap-image"
#define BLKSNAP 'V'

#define BLKSNAP_VERSION_MAJOR 1
#define BLKSNAP_VERSION_MINOR 1

/**
 * enum blkfilter_ctl_blksnap - Per-device commands of &IOCTL_BLKSNAP_CTL.
 *
 * @blkfilter_ctl_blksnap_cbtinfo: fill a &struct blksnap_cbtinfo.
 * @blkfilter_ctl_blksnap_cbtmap: copy a window of the change map frozen at
 *	the last take, described by a &struct blksnap_cbtmap; returns the
 *	number of bytes copied.
 * @blkfilter_ctl_blksnap_cbtdirty: mark the sector ranges of a
 *	&struct blksnap_cbtdirty as changed.
 * @blkfilter_ctl_blksnap_snapshotadd: add the device to the snapshot named
 *	by a &struct blksnap_snapshotadd.
 * @blkfilter_ctl_blksnap_snapshotinfo: fill a &struct blksnap_snapshotinfo
 *	for the device's newest taken snapshot (all zero when none is).
 * @blkfilter_ctl_blksnap_snapshotinfo_of: fill a
 *	&struct blksnap_snapshotinfo_of for the snapshot it names (1.1).
 */
enum blkfilter_ctl_blksnap {
	blkfilter_ctl_blksnap_cbtinfo,
	blkfilter_ctl_blksnap_cbtmap,
	blkfilter_ctl_blksnap_cbtdirty,
	blkfilter_ctl_blksnap_snapshotadd,
	blkfilter_ctl_blksnap_snapshotinfo,
	blkfilter_ctl_blksnap_snapshotinfo_of,
};

#ifndef UUID_SIZE
#define UUID_SIZE 16
#endif

/**
 * struct blksnap_uuid - A 16-byte identifier.
 * @b: the bytes.
 */
struct blksnap_uuid {
	__u8 b[UUID_SIZE];
};

/**
 * struct blksnap_cbtinfo - Change tracking state of a device.
 * @device_capacity: device capacity in bytes.
 * @block_size: tracking block size in bytes, a power of two.
 * @block_count: number of tracking blocks, and of bytes in the map.
 * @generation_id: changes when the map is reset; a consumer whose
 *	generation differs has lost its history.
 * @changes_number: number of the last taken snapshot in this generation,
 *	0 before the first take. A map byte greater than N marks a block
 *	changed since snapshot N was taken. Numbers run from 1 to 254: the
 *	255th take of a generation starts a new one, whose first snapshot is
 *	number 1 with an all-zero map.
 */
struct blksnap_cbtinfo {
	__u64 device_capacity;
	__u32 block_size;
	__u32 block_count;
	struct blksnap_uuid generation_id;
	__u8 changes_number;
};

/**
 * struct blksnap_cbtmap - A window of the change map.
 * @offset: first block (byte of the map) to copy; -EINVAL past the map's
 *	end, nothing copied at it.
 * @length: size of @buffer in bytes.
 * @buffer: user pointer to the output buffer.
 *
 * Before the first take the map reads as zeros.
 */
struct blksnap_cbtmap {
	__u32 offset;
	__u32 length;
	__u64 buffer;
};

/**
 * struct blksnap_sectors - A range of a block device.
 * @offset: first sector, relative to the start of the device.
 * @count: number of sectors.
 */
struct blksnap_sectors {
	__u64 offset;
	__u64 count;
};

/**
 * struct blksnap_cbtdirty - Ranges to mark as changed.
 * @count: number of elements at @dirty_sectors, at most
 *	%BLKSNAP_CBTDIRTY_MAX_COUNT.
 * @dirty_sectors: user pointer to an array of &struct blksnap_sectors.
 *
 * All or nothing: an empty range, or one reaching past the device's end,
 * fails the command with -EINVAL before any range is marked.
 */
struct blksnap_cbtdirty {
	__u32 count;
	__u64 dirty_sectors;
};

#define BLKSNAP_CBTDIRTY_MAX_COUNT 65536

/**
 * struct blksnap_snapshotadd - Snapshot to add a device to.
 * @id: the snapshot's id.
 *
 * -ENOENT for an unknown id, -EBUSY when the snapshot is taken, the
 * device is in it already or in snapshots_per_device_maximum snapshots,
 * -EINVAL when the snapshot's difference storage lives on the device.
 */
struct blksnap_snapshotadd {
	struct blksnap_uuid id;
};

#define IMAGE_DISK_NAME_LEN 32

/**
 * struct blksnap_snapshotinfo - Snapshot state of a device.
 * @error_code: 0, or the negative errno that corrupted the device's image
 *	(-ENOSPC: the difference storage overflowed).
 * @image: name of the image block device once the snapshot is taken,
 *	an empty string before.
 */
struct blksnap_snapshotinfo {
	__s32 error_code;
	__u8 image[IMAGE_DISK_NAME_LEN];
};

/**
 * struct blksnap_snapshotinfo_of - State of a device in one snapshot.
 * @id: in: the snapshot; -ENOENT unless the device was added to it.
 * @info: out: as &struct blksnap_snapshotinfo, for that snapshot.
 * @storage_used_sect: out: sectors of the snapshot's difference storage
 *	holding copies that a held snapshot still reads, whichever devices
 *	they belong to.
 * @storage_filled_sect: out: sectors of it handed out so far.
 */
struct blksnap_snapshotinfo_of {
	struct blksnap_uuid id;
	struct blksnap_snapshotinfo info;
	__u64 storage_used_sect;
	__u64 storage_filled_sect;
};

/* Numbers of the control device's commands. */
enum blksnap_ioctl {
	blksnap_ioctl_version,
	blksnap_ioctl_snapshot_create,
	blksnap_ioctl_snapshot_destroy,
	blksnap_ioctl_snapshot_take,
	blksnap_ioctl_snapshot_collect,
	blksnap_ioctl_snapshot_wait_event,
	/* Additions for stock kernels. */
	blksnap_ioctl_attach = 16,
	blksnap_ioctl_detach,
	blksnap_ioctl_ctl,
};

/**
 * struct blksnap_version - Module version.
 * @major: incompatible interface changes.
 * @minor: compatible additions.
 * @revision: fixes.
 * @build: 0.
 */
struct blksnap_version {
	__u16 major;
	__u16 minor;
	__u16 revision;
	__u16 build;
};

#define IOCTL_BLKSNAP_VERSION \
	_IOR(BLKSNAP, blksnap_ioctl_version, struct blksnap_version)

/**
 * struct blksnap_snapshot_create - Argument of IOCTL_BLKSNAP_SNAPSHOT_CREATE.
 * @diff_storage_limit_sect: largest size the difference storage may reach,
 *	in 512-byte sectors.
 * @diff_storage_fd: the difference storage: a regular file opened for
 *	reading and writing on a file system that supports fallocate (an
 *	unnamed O_TMPFILE file is the intended case), or a block device
 *	opened for reading and writing with O_EXCL; -EBUSY when another
 *	snapshot uses the same file or device, or a destroyed one whose
 *	storage still holds copies that held snapshots read.
 * @id: out: the new snapshot's id.
 */
struct blksnap_snapshot_create {
	__u64 diff_storage_limit_sect;
	__u32 diff_storage_fd;
	struct blksnap_uuid id;
};

#define IOCTL_BLKSNAP_SNAPSHOT_CREATE \
	_IOWR(BLKSNAP, blksnap_ioctl_snapshot_create, \
	      struct blksnap_snapshot_create)

/* Releases the snapshot, its images and its storage; tracking goes on. */
#define IOCTL_BLKSNAP_SNAPSHOT_DESTROY \
	_IOW(BLKSNAP, blksnap_ioctl_snapshot_destroy, struct blksnap_uuid)

/*
 * Freezes every device of the snapshot, switches their change maps and
 * creates their images at one instant. -EBUSY when a held snapshot of one
 * of its devices keeps its difference storage on a device of the take
 * (copies for it are stored there while the take freezes that device);
 * the take works once that snapshot is destroyed.
 */
#define IOCTL_BLKSNAP_SNAPSHOT_TAKE \
	_IOW(BLKSNAP, blksnap_ioctl_snapshot_take, struct blksnap_uuid)

/**
 * struct blksnap_snapshot_collect - Argument of
 *	IOCTL_BLKSNAP_SNAPSHOT_COLLECT.
 * @count: in: room at @ids; out: number of snapshots. When the room is too
 *	small, or @ids is 0 (the count-only query), the ioctl fails with
 *	-ENODATA and only sets @count.
 * @ids: user pointer to an array of &struct blksnap_uuid.
 */
struct blksnap_snapshot_collect {
	__u32 count;
	__u64 ids;
};

#define IOCTL_BLKSNAP_SNAPSHOT_COLLECT \
	_IOWR(BLKSNAP, blksnap_ioctl_snapshot_collect, \
	      struct blksnap_snapshot_collect)

/**
 * enum blksnap_event_codes - Events of a snapshot.
 * @blksnap_event_code_corrupted: an image became unreadable; the data is
 *	a &struct blksnap_event_corrupted.
 * @blksnap_event_code_low_space: the difference storage reached its limit
 *	and less than half of diff_storage_minimum is free; the data is a
 *	&struct blksnap_event_low_space.
 */
enum blksnap_event_codes {
	blksnap_event_code_corrupted,
	blksnap_event_code_low_space,
};

/**
 * struct blksnap_snapshot_event - Argument of
 *	IOCTL_BLKSNAP_SNAPSHOT_WAIT_EVENT.
 * @id: snapshot id.
 * @timeout_ms: how long to wait for an event.
 * @code: out: &enum blksnap_event_codes.
 * @time_label: out: when the event was queued, in ns of CLOCK_MONOTONIC.
 * @data: out: the event's data.
 */
struct blksnap_snapshot_event {
	struct blksnap_uuid id;
	__u32 timeout_ms;
	__u32 code;
	__s64 time_label;
	__u8 data[4096 - 32];
};

#define IOCTL_BLKSNAP_SNAPSHOT_WAIT_EVENT \
	_IOWR(BLKSNAP, blksnap_ioctl_snapshot_wait_event, \
	      struct blksnap_snapshot_event)

/**
 * struct blksnap_event_corrupted - Data of a corrupted event.
 * @dev_id_mj: major number of the original device.
 * @dev_id_mn: minor number of the original device.
 * @err_code: the negative errno.
 */
struct blksnap_event_corrupted {
	__u32 dev_id_mj;
	__u32 dev_id_mn;
	__s32 err_code;
};

/**
 * struct blksnap_event_low_space - Data of a low space event.
 * @free_sectors: sectors still free in the difference storage.
 * @limit_sectors: the storage's limit.
 */
struct blksnap_event_low_space {
	__u64 free_sectors;
	__u64 limit_sectors;
};

/**
 * struct blksnap_bdev - Argument of IOCTL_BLKSNAP_ATTACH and
 *	IOCTL_BLKSNAP_DETACH.
 * @fd: an open file descriptor of the block device (whole disk or
 *	partition).
 * @flags: must be 0.
 */
struct blksnap_bdev {
	__u32 fd;
	__u32 flags;
};

/*
 * Attach starts change tracking on a live device (the device is frozen
 * while the filter is installed); -EALREADY if already attached. Detach
 * stops it; -EBUSY while the device is in a snapshot.
 */
#define IOCTL_BLKSNAP_ATTACH \
	_IOW(BLKSNAP, blksnap_ioctl_attach, struct blksnap_bdev)
#define IOCTL_BLKSNAP_DETACH \
	_IOW(BLKSNAP, blksnap_ioctl_detach, struct blksnap_bdev)

/**
 * struct blksnap_ctl - Argument of IOCTL_BLKSNAP_CTL: the payload of the
 *	v6 BLKFILTER_CTL command with the device named by a descriptor.
 * @fd: an open file descriptor of an attached block device.
 * @cmd: &enum blkfilter_ctl_blksnap.
 * @optlen: in: size of the buffer at @opt; out: size of the command's
 *	structure when it was too small (the ioctl then fails with -ENOSPC).
 * @reserved: must be 0.
 * @opt: user pointer to the command's structure.
 */
struct blksnap_ctl {
	__u32 fd;
	__u32 cmd;
	__u32 optlen;
	__u32 reserved;
	__u64 opt;
};

#define IOCTL_BLKSNAP_CTL \
	_IOWR(BLKSNAP, blksnap_ioctl_ctl, struct blksnap_ctl)

#endif /* _UAPI_LINUX_BLKSNAP_H */
