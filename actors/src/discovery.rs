//! Discovery over mDNS (the `zeroconf` crate on Avahi): the coordinator advertises
//! `_dyno._tcp` with a TXT record naming its fleet and protocol version; agents and
//! workers browse, keep what is of their fleet and version, drop duplicates (one event
//! arrives per interface and protocol), and still authenticate what they find. Static
//! addresses in the config are the fallback.
//!
//! Avahi's event loops are not `Send`: each advertisement and browse runs on a thread of
//! its own. Start the daemons with `scripts/avahi.sh` where no init system does.
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use zeroconf::prelude::*;
use zeroconf::{BrowserEvent, MdnsBrowser, MdnsService, ServiceType, TxtRecord};

use dyno::wire::session::dial;
use dyno::wire::{Conn, Identity, PROTOCOL_VERSION};

const NAME: &str = "dyno";
const PROTOCOL: &str = "tcp";

fn avahi_hint(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!(
        "mDNS: {e}; is avahi-daemon running? (`scripts/avahi.sh` starts it where no init \
         system does); static addresses still work"
    )
}

/// An advertisement, withdrawn when dropped.
pub struct Advert {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Advert {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Advertises a coordinator's control endpoint on `port`.
pub fn advertise(fleet: &str, instance: &str, port: u16) -> anyhow::Result<Advert> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready, registered) = mpsc::channel::<Result<(), String>>();
    let (fleet, instance, flag) = (fleet.to_string(), instance.to_string(), stop.clone());
    let thread = std::thread::spawn(move || {
        let run = || -> Result<(), String> {
            let kind = ServiceType::new(NAME, PROTOCOL).map_err(|e| e.to_string())?;
            let mut service = MdnsService::new(kind, port);
            let mut txt = TxtRecord::new();
            txt.insert("fleet", &fleet).map_err(|e| e.to_string())?;
            txt.insert("version", &PROTOCOL_VERSION.to_string())
                .map_err(|e| e.to_string())?;
            service.set_name(&instance);
            service.set_txt_record(txt);
            let done = Arc::new(Mutex::new(None::<Result<(), String>>));
            let d = done.clone();
            service.set_registered_callback(Box::new(move |r, _| {
                *d.lock().expect("not poisoned") = Some(r.map(|_| ()).map_err(|e| e.to_string()));
            }));
            let event_loop = service.register().map_err(|e| e.to_string())?;
            let mut told = false;
            while !flag.load(Ordering::Acquire) {
                event_loop
                    .poll(Duration::from_millis(100))
                    .map_err(|e| e.to_string())?;
                if !told {
                    if let Some(r) = done.lock().expect("not poisoned").take() {
                        let _ = ready.send(r.clone());
                        r?;
                        told = true;
                    }
                }
            }
            Ok(())
        };
        if let Err(e) = run() {
            let _ = ready.send(Err(e));
        }
    });
    match registered.recv_timeout(Duration::from_secs(5)) {
        Ok(Ok(())) => Ok(Advert {
            stop,
            thread: Some(thread),
        }),
        Ok(Err(e)) => Err(avahi_hint(e)),
        Err(_) => {
            stop.store(true, Ordering::Release);
            Err(avahi_hint("no registration within 5 s"))
        }
    }
}

/// One coordinator found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Found {
    pub addr: String,
    pub name: String,
}

/// A browse event's name, address, port and TXT record.
type Seen = (String, String, u16, Option<TxtRecord>);

/// Browses for `window` and returns the coordinators of `fleet` speaking this protocol
/// version, each once.
pub fn browse(fleet: &str, window: Duration) -> anyhow::Result<Vec<Found>> {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let (s, e) = (seen.clone(), errors.clone());
    let handle = std::thread::spawn(move || -> Result<(), String> {
        let kind = ServiceType::new(NAME, PROTOCOL).map_err(|e| e.to_string())?;
        let mut browser = MdnsBrowser::new(kind);
        browser.set_service_callback(Box::new(move |event, _| match event {
            Ok(BrowserEvent::Add(d)) => s.lock().expect("not poisoned").push((
                d.name().clone(),
                d.address().clone(),
                *d.port(),
                d.txt().clone(),
            )),
            Ok(BrowserEvent::Remove(_)) => {}
            Err(err) => e.lock().expect("not poisoned").push(err.to_string()),
        }));
        let event_loop = browser.browse_services().map_err(|e| e.to_string())?;
        let end = Instant::now() + window;
        while Instant::now() < end {
            event_loop
                .poll(Duration::from_millis(50))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    });
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("mDNS browser thread panicked"))?
        .map_err(avahi_hint)?;
    let mut out = BTreeSet::new();
    for (name, address, port, txt) in seen.lock().expect("not poisoned").iter() {
        let Some(txt) = txt else { continue };
        if txt.get("fleet").as_deref() != Some(fleet)
            || txt.get("version") != Some(PROTOCOL_VERSION.to_string())
        {
            continue; // another fleet, or another protocol version
        }
        let addr = if address.contains(':') {
            if address.starts_with("fe80") {
                continue; // link-local IPv6 needs a scope id
            }
            format!("[{address}]:{port}")
        } else {
            format!("{address}:{port}")
        };
        out.insert(Found {
            addr,
            name: name.clone(),
        });
    }
    Ok(out.into_iter().collect())
}

/// The addresses to try: what mDNS finds (when enabled) first, then the static ones.
pub async fn candidates(fleet: &str, mdns: bool, statics: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    if mdns {
        let fleet = fleet.to_string();
        match tokio::task::spawn_blocking(move || browse(&fleet, Duration::from_millis(1500))).await
        {
            Ok(Ok(found)) => {
                for f in found {
                    tracing::info!(coordinator = %f.addr, name = %f.name, "found over mDNS");
                    out.push(f.addr);
                }
            }
            Ok(Err(e)) => tracing::info!("{e}"),
            Err(e) => tracing::warn!("mDNS browse: {e}"),
        }
    }
    for s in statics {
        if !out.contains(s) {
            out.push(s.clone());
        }
    }
    out
}

/// The pauses between attempts to reach a coordinator: exponential from 250 ms to 2 s,
/// each with a random part as large again (`backon`'s jitter), so that a fleet that lost
/// its coordinator at once does not redial at once.
pub fn redial_backoff() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(2))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// The pause after a session with the coordinator ended, before finding it again: the
/// first of [`redial_backoff`]'s, jittered.
pub async fn pause_before_redial() {
    let pause = redial_backoff()
        .next()
        .unwrap_or(Duration::from_millis(250));
    tokio::time::sleep(pause).await;
}

/// Finds a coordinator of `me`'s fleet (over mDNS when `mdns`, then at the static
/// addresses) and dials it; tries again after each of [`redial_backoff`]'s pauses until
/// one answers. `meanwhile` says in the log what this process does until then.
pub async fn connect(
    me: &Identity,
    max_frame: usize,
    mdns: bool,
    statics: &[String],
    meanwhile: &str,
) -> (String, Conn) {
    let mut pauses = redial_backoff();
    loop {
        for addr in candidates(&me.fleet, mdns, statics).await {
            match dial(&addr, me, max_frame).await {
                Ok(c) => return (addr, c),
                Err(e) => tracing::info!(coordinator = %addr, "not connected ({e}); {meanwhile}"),
            }
        }
        let pause = pauses.next().unwrap_or(Duration::from_secs(2));
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn redials_back_off_with_jitter() {
        let a: Vec<Duration> = super::redial_backoff().take(8).collect();
        let b: Vec<Duration> = super::redial_backoff().take(8).collect();
        // From 250 ms, growing, at most 2 s and as much again of jitter.
        assert!(a[0] >= Duration::from_millis(250), "{a:?}");
        assert!(a.iter().all(|d| *d <= Duration::from_secs(4)), "{a:?}");
        assert!(a[5] >= Duration::from_secs(2), "{a:?}");
        // Two agents do not wait alike.
        assert_ne!(a, b, "no jitter");
    }
}
