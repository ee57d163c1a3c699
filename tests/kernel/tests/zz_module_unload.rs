//! Module unload is refused while the control device is open, a device is
//! attached or a snapshot exists, and succeeds once all is released; the
//! module is then loaded again from `$BLKSNAP_KO` with the parameters it
//! had, so tests after this one still find it. (Named `zz_` so that a
//! harness running binaries in name order runs it last.)

#[macro_use]
mod common;

use common::*;
use nix::errno::Errno;

/// delete_module must fail while the module is in use. The kernel refuses
/// a module with a non-zero reference count with EWOULDBLOCK (EAGAIN), so
/// that is what "busy" looks like from user space; EBUSY is accepted too.
fn assert_unload_refused(what: &str, params: &[String]) {
    match unload_module() {
        Err(Errno::EAGAIN | Errno::EBUSY) => {}
        Err(e) => panic!("unload {what}: unexpected {e}"),
        Ok(()) => {
            // Leave a loaded module behind for the tests that follow.
            load_module(params);
            panic!("the module unloaded {what}");
        }
    }
    assert!(module_loaded());
}

#[test]
fn unload_is_refused_while_busy_and_works_after_cleanup() {
    let params = module_params();
    let disks = disks();
    {
        let (ctl, _) = setup();
        let _ = &ctl;
        assert_unload_refused("with the control device open", &params);
    }

    let dev = open_rw(&disks.data_a);
    let storage = open_excl(&disks.storage);
    let limit = size_of(&storage) / SECTOR;

    control().attach(&dev).expect("attach");
    assert_unload_refused("with a device attached", &params);

    let id = control().snapshot_create(&storage, limit).expect("create");
    control().detach(&dev).expect("detach");
    assert_unload_refused("with an empty snapshot", &params);
    control().snapshot_destroy(id).expect("destroy");

    let ctl = control();
    ctl.attach(&dev).expect("attach");
    let id = ctl.snapshot_create(&storage, limit).expect("create");
    ctl.snapshot_add(id, &dev).expect("add");
    ctl.snapshot_take(id).expect("take");
    drop(ctl);
    assert_unload_refused("with a taken snapshot", &params);
    let ctl = control();
    ctl.snapshot_destroy(id).expect("destroy");
    ctl.detach(&dev).expect("detach");
    drop(ctl);

    unload_module().unwrap_or_else(|e| {
        panic!(
            "unload of an idle module: {e}, reference count {}",
            module_refcnt()
        )
    });
    assert!(
        !module_loaded(),
        "/sys/module/blksnap still there after unload"
    );
    load_module(&params);
    let v = control().version().expect("version after reload");
    assert!(v.is_compatible(), "reloaded module has version {v}");
    assert_eq!(module_params(), params, "parameters after reload");
    say!("unload refused 4 times while busy; unloaded and reloaded {v}");
}
