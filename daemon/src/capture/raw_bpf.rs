//! What aya 0.14 cannot do, done with raw bpf(2) calls:
//! - unix-socket hooks for kernels (>= 6.7) whose BPF LSM is unavailable:
//!   `BPF_CGROUP_UNIX_CONNECT` / `BPF_CGROUP_UNIX_SENDMSG` programs that
//!   refuse every unix-socket connect, and every unix datagram sent to an
//!   address, from an agent cgroup (aya does not know these attach types).
//!   Fails closed: the two-instruction program has no path to "allow".
//! - cgroup links for programs aya cannot pin (cgroup/getsockopt).
#![allow(unsafe_code)]

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
pub const BPF_CGROUP_UNIX_CONNECT: u32 = 49;
pub const BPF_CGROUP_UNIX_SENDMSG: u32 = 50;
pub const BPF_CGROUP_GETSOCKOPT: u32 = 21;

/// `r0 = 0; exit`: refuse (the caller gets EPERM).
const DENY_PROGRAM: [u64; 2] = [
    // BPF_ALU64 | BPF_MOV | BPF_K, dst r0, imm 0
    0xb7, // BPF_JMP | BPF_EXIT
    0x95,
];

/// The leading fields of `union bpf_attr` for BPF_PROG_LOAD.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The leading fields of `union bpf_attr` for BPF_LINK_CREATE.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

/// The leading fields of `union bpf_attr` for BPF_OBJ_PIN.
#[repr(C)]
#[derive(Default)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a #[repr(C)] prefix of union bpf_attr for `cmd`,
    // valid for the duration of the call; the kernel zero-extends it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = i32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A loaded deny program for one unix attach type.
pub struct DenyUnix {
    pub attach_type: u32,
    prog: OwnedFd,
}

impl DenyUnix {
    pub fn load(attach_type: u32) -> io::Result<Self> {
        let license = c"GPL";
        let mut name = [0u8; 16];
        for (d, s) in name.iter_mut().zip(b"cdn_deny_unix") {
            *d = *s;
        }
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
            insn_cnt: DENY_PROGRAM.len() as u32,
            insns: DENY_PROGRAM.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name: name,
            expected_attach_type: attach_type,
            ..Default::default()
        };
        let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
        Ok(Self {
            attach_type,
            prog: owned(fd)?,
        })
    }

    pub fn attach(&self, cgroup: &std::fs::File) -> io::Result<OwnedFd> {
        link_cgroup(self.prog.as_fd(), cgroup, self.attach_type)
    }
}

/// Attaches a loaded program to a cgroup with a bpf_link; the link detaches
/// when its last reference (fd or pin) goes.
pub fn link_cgroup(
    prog: BorrowedFd<'_>,
    cgroup: &std::fs::File,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        flags: 0,
    };
    owned(bpf(BPF_LINK_CREATE, &mut attr)?)
}

/// Pins a link in bpffs.
pub fn pin(link: &OwnedFd, path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut attr = ObjPinAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: link.as_raw_fd() as u32,
        file_flags: 0,
    };
    bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
}
