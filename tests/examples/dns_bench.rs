//! The DNS benchmark's workloads (`cargo xtask bench --only dns` runs this), with the
//! suite's own fixtures (tests/src/dns.rs):
//!
//! - `serve`: the test zone's dnsmasq on 127.0.0.77:53; prints `ready`, stops when its
//!   standard input closes.
//! - `storm N THREADS`: N lookups of unique names at it; prints
//!   `{"answered":…,"unanswered":…,"secs":…}`.
//! - `flood N`: N 512-byte UDP datagrams between two loopback sockets on ports that are
//!   not DNS ports (traffic the DNS probe must give up on); prints `{"secs":…}`.

use std::{
    io::{BufRead, Write},
    net::{Ipv4Addr, UdpSocket},
    time::{Duration, Instant},
};

use hostscope_tests::dns::{storm, Dnsmasq, ZONE_SERVER};

fn arg(args: &[String], i: usize, what: &str) -> usize {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("usage: dns_bench serve | storm N THREADS | flood N ({what})"))
}

fn serve() {
    let zone = Dnsmasq::zone(ZONE_SERVER, None);
    println!("ready {}", zone.pid());
    std::io::stdout().flush().unwrap();
    // Until the benchmark closes our stdin (or dies).
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
    }
}

/// One window of datagrams in flight at most: the receiver drains as the sender sends,
/// so none is dropped for a full socket buffer.
fn flood(n: usize) {
    let rx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let to = rx.local_addr().unwrap();
    let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let payload = [0x5au8; 512];
    let mut buf = [0u8; 1024];
    let start = Instant::now();
    for _ in 0..n {
        tx.send_to(&payload, to).unwrap();
        rx.recv(&mut buf).expect("the datagram came back");
    }
    println!("{{\"secs\":{}}}", start.elapsed().as_secs_f64());
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve(),
        Some("storm") => {
            let n = arg(&args, 1, "N");
            let threads = arg(&args, 2, "THREADS");
            let s = storm(
                std::net::SocketAddr::from((ZONE_SERVER, 53)),
                &format!("b{}-", std::process::id()),
                n,
                threads,
            );
            println!(
                "{{\"answered\":{},\"unanswered\":{},\"secs\":{}}}",
                s.answered,
                s.unanswered,
                s.elapsed.as_secs_f64()
            );
        }
        Some("flood") => flood(arg(&args, 1, "N")),
        _ => {
            eprintln!("usage: dns_bench serve | storm N THREADS | flood N");
            std::process::exit(2);
        }
    }
}
