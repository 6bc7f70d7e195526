//! What aya 0.14 cannot do, done with raw bpf(2) calls:
//! - unix-socket hooks (kernel >= 6.7): `BPF_CGROUP_UNIX_CONNECT` /
//!   `BPF_CGROUP_UNIX_SENDMSG` programs that refuse every unix-socket connect,
//!   and every unix datagram sent to an address, from an agent cgroup unless
//!   the path is on the allow list (aya does not know these attach types).
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
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
pub const BPF_CGROUP_UNIX_CONNECT: u32 = 49;
pub const BPF_CGROUP_UNIX_SENDMSG: u32 = 50;
pub const BPF_CGROUP_GETSOCKOPT: u32 = 21;

/// Encodes one instruction (struct bpf_insn, little endian).
const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    (code as u64)
        | (((dst | (src << 4)) as u64) << 8)
        | ((off as u16 as u64) << 16)
        | ((imm as u32 as u64) << 32)
}

const MOV64_X: u8 = 0xbf;
const MOV64_K: u8 = 0xb7;
const ADD64_K: u8 = 0x07;
const ST_DW: u8 = 0x7a;
const LDX_DW: u8 = 0x79;
const LDX_W: u8 = 0x61;
const LDX_B: u8 = 0x71;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const JA: u8 = 0x05;
const JEQ_K: u8 = 0x15;
const JNE_K: u8 = 0x55;
const JSLT_K: u8 = 0xc5;
const JSLE_K: u8 = 0xd5;
const LD_IMM64: u8 = 0x18;
const PSEUDO_MAP_FD: u8 = 1;
const FP: u8 = 10;
const MAP_LOOKUP_ELEM: i32 = 1;
const PROBE_READ_KERNEL: i32 = 113;
const PROBE_READ_KERNEL_STR: i32 = 115;

/// The unix allow-list program for `BPF_CGROUP_UNIX_CONNECT` and
/// `BPF_CGROUP_UNIX_SENDMSG`, hand-assembled because aya 0.14 cannot load
/// programs for these attach types. Its context is the kernel's
/// `struct bpf_sock_addr_kern { sk; uaddr (+8); tmp_reg; t_ctx; uaddrlen (+32) }`,
/// read with bpf_probe_read_kernel. It builds the same 112-byte key as
/// `cordon_common::UnixPath` (pathname sockets end at the first NUL,
/// abstract names keep their full length) and allows only keys present in
/// the `CDN_UNIX` map. Every error path refuses (returns 0: EPERM).
fn unix_allow_program(map_fd: i32) -> Vec<u64> {
    let mut p = vec![insn(MOV64_X, 6, 1, 0, 0)]; // 0: r6 = ctx
    for k in 1..=14i16 {
        p.push(insn(ST_DW, FP, 0, -8 * k, 0)); // 1-14: key[fp-112..fp) = 0
    }
    p.extend([
        insn(MOV64_X, 1, FP, 0, 0),                  // 15: r1 = fp
        insn(ADD64_K, 1, 0, 0, -152),                // 16: r1 = fp-152 (copy of the kernel ctx)
        insn(MOV64_K, 2, 0, 0, 40),                  // 17: r2 = 40
        insn(MOV64_X, 3, 6, 0, 0),                   // 18: r3 = ctx
        insn(CALL, 0, 0, 0, PROBE_READ_KERNEL),      // 19
        insn(JNE_K, 0, 0, 38, 0),                    // 20: error -> deny (59)
        insn(LDX_DW, 9, FP, -144, 0),                // 21: r9 = uaddr
        insn(LDX_W, 8, FP, -120, 0),                 // 22: r8 = uaddrlen
        insn(ADD64_K, 8, 0, 0, -2),                  // 23: r8 = length of sun_path
        insn(JSLT_K, 8, 0, 34, 1),                   // 24: r8 < 1 -> deny (59)
        insn(JSLE_K, 8, 0, 1, 108),                  // 25: r8 <= 108 -> 27
        insn(MOV64_K, 8, 0, 0, 108),                 // 26: r8 = 108
        insn(ADD64_K, 9, 0, 0, 2),                   // 27: r9 = &sun_path
        insn(ST_DW, FP, 0, -160, 0),                 // 28: scratch = 0
        insn(MOV64_X, 1, FP, 0, 0),                  // 29
        insn(ADD64_K, 1, 0, 0, -160),                // 30: r1 = &scratch
        insn(MOV64_K, 2, 0, 0, 1),                   // 31: r2 = 1
        insn(MOV64_X, 3, 9, 0, 0),                   // 32: r3 = &sun_path
        insn(CALL, 0, 0, 0, PROBE_READ_KERNEL),      // 33: first byte
        insn(JNE_K, 0, 0, 24, 0),                    // 34: error -> deny (59)
        insn(LDX_B, 1, FP, -160, 0),                 // 35: r1 = sun_path[0]
        insn(JEQ_K, 1, 0, 8, 0),                     // 36: abstract -> 45
        insn(MOV64_X, 2, 8, 0, 0),                   // 37: pathname: r2 = len + 1
        insn(ADD64_K, 2, 0, 0, 1),                   // 38
        insn(MOV64_X, 1, FP, 0, 0),                  // 39
        insn(ADD64_K, 1, 0, 0, -112),                // 40: r1 = &key
        insn(MOV64_X, 3, 9, 0, 0),                   // 41
        insn(CALL, 0, 0, 0, PROBE_READ_KERNEL_STR),  // 42: copy up to the NUL
        insn(JSLT_K, 0, 0, 15, 1),                   // 43: error -> deny (59)
        insn(JA, 0, 0, 6, 0),                        // 44: -> lookup (51)
        insn(MOV64_X, 1, FP, 0, 0),                  // 45: abstract
        insn(ADD64_K, 1, 0, 0, -112),                // 46: r1 = &key
        insn(MOV64_X, 2, 8, 0, 0),                   // 47: r2 = len
        insn(MOV64_X, 3, 9, 0, 0),                   // 48
        insn(CALL, 0, 0, 0, PROBE_READ_KERNEL),      // 49: copy all of it
        insn(JNE_K, 0, 0, 8, 0),                     // 50: error -> deny (59)
        insn(LD_IMM64, 1, PSEUDO_MAP_FD, 0, map_fd), // 51: r1 = CDN_UNIX
        insn(0, 0, 0, 0, 0),                         // 52
        insn(MOV64_X, 2, FP, 0, 0),                  // 53
        insn(ADD64_K, 2, 0, 0, -112),                // 54: r2 = &key
        insn(CALL, 0, 0, 0, MAP_LOOKUP_ELEM),        // 55
        insn(JEQ_K, 0, 0, 2, 0),                     // 56: not listed -> deny (59)
        insn(MOV64_K, 0, 0, 0, 1),                   // 57: allow
        insn(EXIT, 0, 0, 0, 0),                      // 58
        insn(MOV64_K, 0, 0, 0, 0),                   // 59: deny
        insn(EXIT, 0, 0, 0, 0),                      // 60
    ]);
    p
}

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

/// A loaded unix allow-list program for one unix attach type.
pub struct UnixGuard {
    pub attach_type: u32,
    prog: OwnedFd,
}

impl UnixGuard {
    /// Loads the program; `allow_list` is the `CDN_UNIX` map.
    pub fn load(attach_type: u32, allow_list: BorrowedFd<'_>) -> io::Result<Self> {
        let program = unix_allow_program(allow_list.as_raw_fd());
        let license = c"GPL";
        let mut name = [0u8; 16];
        for (d, s) in name.iter_mut().zip(b"cdn_unix_guard") {
            *d = *s;
        }
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
            insn_cnt: program.len() as u32,
            insns: program.as_ptr() as u64,
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

/// The leading fields of `union bpf_attr` for map element commands.
#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Takes an entry out of a hash map in one syscall (aya 0.14 offers get and
/// remove, two). `None` when the key is absent.
pub fn lookup_and_delete<K: aya::Pod, V: aya::Pod>(
    map: BorrowedFd<'_>,
    key: &K,
) -> io::Result<Option<V>> {
    let mut value = std::mem::MaybeUninit::<V>::zeroed();
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: std::ptr::from_ref(key) as u64,
        value: value.as_mut_ptr() as u64,
        ..Default::default()
    };
    match bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM, &mut attr) {
        // SAFETY: the kernel wrote a whole V (the map's value size is
        // size_of::<V>(), checked when the map was taken) and V is Pod.
        Ok(_) => Ok(Some(unsafe { value.assume_init() })),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn code(i: u64) -> u8 {
        (i & 0xff) as u8
    }
    fn off(i: u64) -> i16 {
        ((i >> 16) & 0xffff) as u16 as i16
    }

    #[test]
    fn unix_program_jumps_land_where_they_should() {
        let p = unix_allow_program(3);
        let deny = p.len() - 2;
        assert_eq!(p[deny], insn(MOV64_K, 0, 0, 0, 0), "deny label moved");
        assert_eq!(code(p[deny + 1]), EXIT);
        assert_eq!(p[deny - 2], insn(MOV64_K, 0, 0, 0, 1), "allow sets r0 = 1");
        for (pc, &i) in p.iter().enumerate() {
            let c = code(i);
            if matches!(c, JA | JEQ_K | JNE_K | JSLT_K | JSLE_K) {
                let target = pc as i64 + 1 + i64::from(off(i));
                assert!(
                    target > pc as i64 && (target as usize) < p.len(),
                    "jump at {pc}"
                );
            }
        }
        // Every error/deny branch goes to the deny label, except the two
        // structural ones (clamp at 25, abstract at 36, to-lookup at 44).
        for pc in [20usize, 24, 34, 43, 50, 56] {
            let target = pc as i64 + 1 + i64::from(off(p[pc]));
            assert_eq!(target as usize, deny, "branch at {pc}");
        }
        assert_eq!(code(p[51]), LD_IMM64);
        assert_eq!((p[51] >> 32) as i32, 3, "map fd patched in");
    }
}
