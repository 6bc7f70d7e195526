//! `cargo xtask demo`: a daemon with a demo config in a temporary state dir,
//! a real loopback HTTP service declared as a resource, a second one that is
//! not, and a scripted agent in a pinned cgroup that makes one allowed and
//! several forbidden connections. Ends with `cordon sessions list`.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};

use crate::gateway::{build, free_port, rfc3339_in, Daemon, Service};

fn http_service(root: &std::path::Path, port: u16) -> Result<Service> {
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting python3 -m http.server (the demo's loopback service)")?;
    let svc = Service(child);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(svc);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!("the demo HTTP service on port {port} did not start")
}

pub fn run() -> Result<()> {
    anyhow::ensure!(
        crate::util::is_root(),
        "the demo loads eBPF programs: run it as root"
    );
    println!("== building cordon");
    let bin = build(false, &["cordon", "cordon-tests"])?;
    let cordon = bin.join("cordon");
    let probe = bin.join("cordon-probe");

    let www = std::env::temp_dir().join(format!("cordon-demo-www-{}", std::process::id()));
    std::fs::create_dir_all(&www)?;
    std::fs::write(
        www.join("orders.txt"),
        "order 1001: 3 widgets\norder 1002: 1 gadget\n",
    )?;
    let (orders_port, admin_port) = (free_port()?, free_port()?);
    let _orders = http_service(&www, orders_port)?;
    let _admin = http_service(&www, admin_port)?;

    let config = format!(
        r#"[[agent]]
name = "demo-agent"

[[resource]]
name = "orders-api"
protocol = "tcp"
address = "127.0.0.1:{orders_port}"

[[grant]]
agent = "demo-agent"
resource = "orders-api"
expires = "{expires}"
"#,
        expires = rfc3339_in(3600)
    );
    println!("== starting the cordon daemon (orders-api on 127.0.0.1:{orders_port} is declared; an admin service on 127.0.0.1:{admin_port} is not)");
    let daemon = Daemon::start(&cordon, "demo", &config)?;
    println!(
        "{}",
        String::from_utf8_lossy(&daemon.cli().arg("status").output()?.stdout)
    );

    let p = probe.display();
    let script = format!(
        r#"
step() {{ printf '\n-- %s\n' "$1"; }}
step "allowed: GET http://127.0.0.1:{orders_port}/orders.txt (declared, granted)"
curl -sS -m 5 http://127.0.0.1:{orders_port}/orders.txt
step "forbidden: the undeclared admin service http://127.0.0.1:{admin_port}/"
curl -sS -m 5 http://127.0.0.1:{admin_port}/ || echo "   -> refused by cordon"
step "forbidden: the same orders-api over IPv6 [::1]:{orders_port} (not declared)"
curl -sS -m 5 -g "http://[::1]:{orders_port}/" || echo "   -> refused by cordon"
step "forbidden: UDP (DNS query to 127.0.0.1:53)"
{p} udp 127.0.0.1:53
step "forbidden: raw socket"
{p} raw
step "forbidden: packet socket"
{p} packet
step "forbidden: a unix socket (the daemon's control socket)"
{p} unix {sock}
step "forbidden: dialing the proxy port itself"
curl -sS -m 5 http://127.0.0.1:{proxy}/ || echo "   -> refused by cordon"
"#,
        sock = daemon.dir.join("control.sock").display(),
        proxy = daemon.port,
    );
    println!("== the agent, inside its cordoned cgroup:");
    let status = daemon
        .run_as("demo-agent", std::path::Path::new("/bin/sh"))
        .args(["-c", &script])
        .status()?;
    println!("\n(agent script exited with {status})");

    println!("\n== outside the cgroup the admin service is reachable as usual (cordon only confines agents):");
    let outside = Command::new("curl")
        .args([
            "-sS",
            "-m",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "HTTP %{http_code}\n",
        ])
        .arg(format!("http://127.0.0.1:{admin_port}/"))
        .output()?;
    print!("{}", String::from_utf8_lossy(&outside.stdout));

    // Let the last session end records land.
    std::thread::sleep(Duration::from_millis(300));
    println!("\n== cordon sessions list");
    let list = daemon.cli().args(["sessions", "list"]).output()?;
    print!("{}", String::from_utf8_lossy(&list.stdout));
    eprint!("{}", String::from_utf8_lossy(&list.stderr));
    println!("\n(show one with `cordon sessions show ID`; the demo now stops the daemon, removes its pins and cgroups)");
    drop(daemon);
    let _ = std::fs::remove_dir_all(&www);
    Ok(())
}
