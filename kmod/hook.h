/* SPDX-License-Identifier: GPL-2.0 */
#ifndef __BLKSNAP_HOOK_H
#define __BLKSNAP_HOOK_H

struct bio;

int hook_init(void);
void hook_pass_bio(struct bio *bio);
void hook_done(void);

#endif /* __BLKSNAP_HOOK_H */
