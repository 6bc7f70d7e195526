//! `cargo xtask setup`: idempotently install what a fresh machine lacks.
//!
//! Debian packages for the real components the tests start, bpffs, the nightly
//! toolchain with rust-src (for the eBPF crate), and bpf-linker built against
//! that nightly's own libLLVM, and the npm packages of the tests' OIDC provider
//! (`npm ci` in tests/oidc). Prints one line per item: `ok X` or `installed X`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util::{checked_stdout, home_dir, is_root, run as run_cmd, stdout_of, which};

pub fn run() -> Result<()> {
    debian_packages()?;
    oidc_provider()?;
    bpffs()?;
    nightly()?;
    bpf_linker()?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Debian packages

/// One thing the project needs from Debian: how to tell it is there, and the
/// package that provides it.
struct Need {
    package: &'static str,
    present: fn() -> bool,
}

fn has(cmd: &str) -> bool {
    which(cmd, &[]).is_some()
}

fn has_initdb() -> bool {
    let Ok(versions) = fs::read_dir("/usr/lib/postgresql") else {
        return false;
    };
    versions
        .flatten()
        .any(|v| v.path().join("bin/initdb").is_file())
}

const NEEDS: &[Need] = &[
    Need {
        package: "postgresql",
        present: has_initdb,
    },
    Need {
        package: "openssh-server",
        present: || has("sshd"),
    },
    Need {
        package: "openssh-client",
        present: || has("ssh"),
    },
    Need {
        package: "nodejs",
        present: || has("node"),
    },
    Need {
        package: "npm",
        present: || has("npm"),
    },
    Need {
        package: "curl",
        present: || has("curl"),
    },
    Need {
        package: "iproute2",
        present: || has("ip"),
    },
    Need {
        package: "util-linux",
        present: || has("setpriv"),
    },
    Need {
        package: "systemd",
        present: || has("systemd-analyze"),
    },
];

fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&Need> = NEEDS.iter().filter(|n| !(n.present)()).collect();
    for need in NEEDS.iter().filter(|n| (n.present)()) {
        println!("ok {}", need.package);
    }
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|n| n.package).collect();
    if !is_root() {
        bail!(
            "missing Debian packages: {}; run `cargo xtask setup` as root or install them",
            names.join(" ")
        );
    }
    run_cmd(apt_get().arg("update")).context("apt-get update")?;
    run_cmd(
        apt_get()
            .args(["install", "-y", "--no-install-recommends"])
            .args(&names),
    )
    .with_context(|| format!("installing {}", names.join(" ")))?;
    for need in missing {
        if !(need.present)() {
            bail!(
                "package {} was installed but what it should provide is still missing",
                need.package
            );
        }
        println!("installed {}", need.package);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// the tests' OIDC provider (npm)

/// Written into node_modules after a successful `npm ci`: a copy of the
/// package-lock.json it installed, so an unchanged lock file is not
/// installed again.
const NPM_STAMP: &str = ".cordon-installed-package-lock.json";

/// `npm ci` in tests/oidc unless node_modules already matches its
/// package-lock.json.
fn oidc_provider() -> Result<()> {
    let dir = crate::workspace_root().join("tests").join("oidc");
    let lock_path = dir.join("package-lock.json");
    let lock = fs::read(&lock_path).with_context(|| format!("reading {}", lock_path.display()))?;
    let modules = dir.join("node_modules");
    let stamp = modules.join(NPM_STAMP);
    let current = fs::read(&stamp).is_ok_and(|s| s == lock)
        && modules.join("oidc-provider").join("package.json").is_file();
    if current {
        println!("ok npm packages of tests/oidc (oidc-provider)");
        return Ok(());
    }
    let Some(npm) = which("npm", &[]) else {
        bail!("npm is missing (the Debian packages step should have installed it)");
    };
    run_cmd(
        Command::new(npm)
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir),
    )
    .with_context(|| format!("npm ci in {}", dir.display()))?;
    fs::write(&stamp, &lock).with_context(|| format!("writing {}", stamp.display()))?;
    println!("installed npm packages of tests/oidc (oidc-provider)");
    Ok(())
}

// ---------------------------------------------------------------------------
// bpffs

const BPFFS: &str = "/sys/fs/bpf";

/// Is a bpf filesystem mounted exactly at /sys/fs/bpf?
fn bpffs_mounted() -> Result<bool> {
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(mountinfo.lines().any(|line| {
        // mountinfo: id parent major:minor root MOUNT_POINT opts [optional...] - FSTYPE source opts
        let fields: Vec<&str> = line.split_whitespace().collect();
        let mount_point = fields.get(4).copied();
        let fstype = fields
            .iter()
            .position(|f| *f == "-")
            .and_then(|i| fields.get(i + 1))
            .copied();
        mount_point == Some(BPFFS) && fstype == Some("bpf")
    }))
}

fn bpffs() -> Result<()> {
    if !is_root() {
        println!("skip bpffs (not root)");
        return Ok(());
    }
    if bpffs_mounted()? {
        println!("ok bpffs {BPFFS}");
        return Ok(());
    }
    run_cmd(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
        .with_context(|| format!("mounting bpffs at {BPFFS}"))?;
    if !bpffs_mounted()? {
        bail!("mounted bpffs at {BPFFS} but /proc/self/mountinfo does not show it");
    }
    println!("installed bpffs {BPFFS}");
    Ok(())
}

// ---------------------------------------------------------------------------
// nightly toolchain

/// A `rustup` command that never self-updates and never installs a toolchain
/// implicitly.
fn rustup() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.env("RUSTUP_AUTO_INSTALL", "0");
    cmd
}

fn nightly_rustc() -> Command {
    let mut cmd = rustup();
    cmd.args(["run", "nightly", "rustc"]);
    cmd
}

fn has_rust_src() -> bool {
    stdout_of(rustup().args(["component", "list", "--toolchain", "nightly", "--installed"]))
        .map(|out| {
            out.lines()
                .any(|l| l.trim() == "rust-src" || l.trim().starts_with("rust-src-"))
        })
        .unwrap_or(false)
}

fn nightly() -> Result<()> {
    if which("rustup", &[]).is_none() {
        bail!("rustup not found on PATH; the machine's Rust toolchain is managed by rustup");
    }
    match stdout_of(nightly_rustc().arg("-V")) {
        Some(version) if has_rust_src() => {
            println!("ok nightly toolchain ({}) with rust-src", version.trim());
        }
        Some(_) => {
            // Adding a component does not update the toolchain (its LLVM stays).
            run_cmd(rustup().args(["component", "add", "rust-src", "--toolchain", "nightly"]))
                .context("adding rust-src to the nightly toolchain")?;
            println!("installed rust-src (nightly)");
        }
        None => {
            run_cmd(rustup().args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
                "--no-self-update",
            ]))
            .context("installing the nightly toolchain")?;
            let version = checked_stdout(nightly_rustc().arg("-V"))?;
            println!("installed nightly toolchain ({})", version.trim());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// bpf-linker

/// `LLVM version: 22.1.4` in `rustc -vV` -> 22.
fn llvm_major(rustc_vv: &str) -> Option<u32> {
    rustc_vv
        .lines()
        .find_map(|l| l.trim().strip_prefix("LLVM version:"))
        .and_then(|v| v.trim().split('.').next())
        .and_then(|m| m.parse().ok())
}

/// The LLVM major a dynamically linked bpf-linker uses, from `ldd`
/// (`libLLVM.so.22.1-rust-...` or Debian's `libLLVM-14.so.1`).
fn linked_llvm_major(binary: &Path) -> Option<u32> {
    let out = stdout_of(Command::new("ldd").arg(binary))?;
    out.lines().find_map(|line| {
        let name = line.split_whitespace().next()?;
        let rest = name
            .strip_prefix("libLLVM.so.")
            .or_else(|| name.strip_prefix("libLLVM-"))?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

fn cargo_bin_dir() -> Result<PathBuf> {
    Ok(match std::env::var_os("CARGO_HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h).join("bin"),
        _ => home_dir()?.join(".cargo/bin"),
    })
}

/// The installed bpf-linker, if `bpf-linker --version` runs.
fn working_bpf_linker() -> Result<Option<(PathBuf, String)>> {
    let Some(path) = which("bpf-linker", &[cargo_bin_dir()?]) else {
        return Ok(None);
    };
    Ok(stdout_of(Command::new(&path).arg("--version")).map(|v| (path, v.trim().to_owned())))
}

/// The nightly's `lib/libLLVM.so.*` file name (e.g. `libLLVM.so.22.1-rust-1.97.0-nightly`).
fn nightly_libllvm(sysroot: &Path, major: u32) -> Result<PathBuf> {
    let lib = sysroot.join("lib");
    let mut found: Vec<PathBuf> = fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .collect();
    found.sort();
    let wanted = format!("libLLVM.so.{major}");
    found
        .iter()
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&wanted))
        })
        .or_else(|| found.first())
        .cloned()
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))
}

fn replace_symlink(target: &Path, link: &Path) -> Result<()> {
    if link.symlink_metadata().is_ok() {
        fs::remove_file(link).with_context(|| format!("removing {}", link.display()))?;
    }
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} -> {}", link.display(), target.display()))
}

fn bpf_linker() -> Result<()> {
    let vv = checked_stdout(nightly_rustc().arg("-vV"))?;
    let major = llvm_major(&vv).context("no `LLVM version:` line in `rustc +nightly -vV`")?;
    let data_dir = home_dir()?.join(".local/share/cordon");
    let marker = data_dir.join("bpf-linker.llvm-major");
    let recorded: Option<u32> = fs::read_to_string(&marker)
        .ok()
        .and_then(|s| s.trim().parse().ok());

    let reason = match working_bpf_linker()? {
        Some((_, version)) if recorded == Some(major) => {
            println!("ok bpf-linker ({version}, LLVM {major})");
            return Ok(());
        }
        Some((path, version)) if recorded.is_none() => {
            // Installed before this marker existed (or by hand): trust it if it is
            // dynamically linked against an LLVM of the nightly's major.
            if linked_llvm_major(&path) == Some(major) {
                fs::create_dir_all(&data_dir)
                    .with_context(|| format!("creating {}", data_dir.display()))?;
                fs::write(&marker, format!("{major}\n"))
                    .with_context(|| format!("writing {}", marker.display()))?;
                println!("ok bpf-linker ({version}, LLVM {major}; marker written)");
                return Ok(());
            }
            format!("{} is not linked against LLVM {major}", path.display())
        }
        Some((_, _)) => format!(
            "built for LLVM {}, nightly has LLVM {major}",
            recorded.map_or_else(|| "?".to_owned(), |r| r.to_string())
        ),
        None => "`bpf-linker --version` does not run".to_owned(),
    };
    println!("building bpf-linker against the nightly's libLLVM {major} ({reason}); this takes a few minutes");

    let sysroot = PathBuf::from(
        checked_stdout(nightly_rustc().args(["--print", "sysroot"]))?
            .trim()
            .to_owned(),
    );
    let libllvm = nightly_libllvm(&sysroot, major)?;
    let file_name = libllvm
        .file_name()
        .context("libLLVM path has no file name")?
        .to_owned();
    // Permanent: the built binary's rpath points here.
    let prefix = data_dir.join(format!("llvm-{major}"));
    let lib_dir = prefix.join("lib");
    fs::create_dir_all(&lib_dir).with_context(|| format!("creating {}", lib_dir.display()))?;
    replace_symlink(&libllvm, &lib_dir.join("libLLVM.so"))?;
    replace_symlink(&libllvm, &lib_dir.join(&file_name))?;

    run_cmd(
        Command::new("cargo")
            .env("LLVM_PREFIX", &prefix)
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--force",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{major}")),
    )
    .context("building bpf-linker")?;

    let Some((_, version)) = working_bpf_linker()? else {
        bail!("bpf-linker was built but `bpf-linker --version` still does not run");
    };
    fs::write(&marker, format!("{major}\n"))
        .with_context(|| format!("writing {}", marker.display()))?;
    println!("installed bpf-linker ({version}, LLVM {major})");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::llvm_major;

    #[test]
    fn llvm_major_from_rustc_vv() {
        let vv = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(vv), Some(22));
        assert_eq!(llvm_major("rustc 1.0"), None);
    }
}
