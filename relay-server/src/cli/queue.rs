//! `relay-server tenant queue NAME` (a tenant's queue settings and its messages by state) and
//! `relay-server queue …` (list, show, retry and discard messages). Changes are recorded in the
//! admin-action log as the management web records them: `queue.settings` (object: the tenant),
//! `queue.retry` and `queue.discard` (object: `tenant/message id`).

use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use relay_store::{
    BodyPreview, Discarded, QueueMessage, QueueSettings, QueueState, Store, Tenant, PREVIEW_BYTES,
};

use super::{format_ms, open_store, CLI_ACTOR};
use crate::config::Config;

/// `tenant queue NAME [options]`: without options it shows the settings and the counts; with
/// them it changes the settings first.
#[derive(Args, Debug)]
pub struct TenantQueueArgs {
    /// The tenant.
    name: String,
    /// Per target, deliver one message at a time: a message waits until the one before it is
    /// final.
    #[arg(long, conflicts_with = "parallel")]
    ordered: bool,
    /// Deliver several messages at once (up to the relay's queue.parallel per node; the default).
    #[arg(long)]
    parallel: bool,
    /// Time to live of the tenant's new messages, e.g. 2h or 7days (at most the relay's
    /// queue.max_ttl).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, conflicts_with = "default_ttl")]
    ttl: Option<Duration>,
    /// Use the relay's queue.ttl again.
    #[arg(long)]
    default_ttl: bool,
    /// Most messages the tenant may have waiting (queued or delivering).
    #[arg(long, value_name = "N", conflicts_with = "default_max_messages")]
    max_messages: Option<u64>,
    /// Use the relay's queue.max_messages again.
    #[arg(long)]
    default_max_messages: bool,
    /// Most body bytes the tenant may have waiting.
    #[arg(long, value_name = "BYTES", conflicts_with = "default_max_bytes")]
    max_bytes: Option<u64>,
    /// Use the relay's queue.max_bytes again.
    #[arg(long)]
    default_max_bytes: bool,
}

/// `queue …`
#[derive(Subcommand, Debug)]
pub enum QueueCommand {
    /// List a tenant's messages, newest first.
    List {
        /// The tenant.
        tenant: String,
        /// Only messages in this state: queued, delivering, delivered, failed, expired or
        /// cancelled.
        #[arg(long)]
        state: Option<String>,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show a message: its status, request headers, the first KiB of its body, its response.
    Show {
        /// The message id (as in its status URL).
        id: String,
    },
    /// Put a failed or expired message back in the queue, due now, with a fresh time to live.
    Retry {
        /// The message id.
        id: String,
    },
    /// Cancel a queued message, or delete a failed, expired or cancelled one with its body.
    Discard {
        /// The message id.
        id: String,
    },
}

/// Runs `tenant queue`.
pub(super) async fn tenant_queue(
    args: TenantQueueArgs,
    store: &Store,
    config: &Config,
) -> anyhow::Result<()> {
    let t = tenant(store, &args.name).await?;
    let old = store.queue_settings(&t.id.0).await?;
    let new = change(&args, old, config)?;
    if new != old {
        store.set_queue_settings(&t.id.0, &new).await?;
        store
            .record_admin_action(CLI_ACTOR, "queue.settings", &t.name)
            .await?;
        println!("queue settings of tenant {} updated", t.name);
    }
    show_tenant_queue(store, &t, &new, config).await
}

/// Runs a `queue` command.
pub(super) async fn queue(cmd: QueueCommand, config: &Config) -> anyhow::Result<()> {
    let store = open_store(config).await?;
    match cmd {
        QueueCommand::List {
            tenant: name,
            state,
            limit,
        } => {
            let state = state.as_deref().map(parse_state).transpose()?;
            if !(1..=1000).contains(&limit) {
                bail!("--limit {limit}: give 1 to 1000");
            }
            let t = tenant(&store, &name).await?;
            let list = store.messages(&t.id.0, state, limit).await?;
            println!(
                "{:<32} {:<10} {:>8} {:<16} {:>10} {:<20} REQUEST / LAST ERROR",
                "ID", "STATE", "ATTEMPTS", "TARGET", "BYTES", "ACCEPTED (UTC)"
            );
            for m in list {
                println!(
                    "{:<32} {:<10} {:>8} {:<16} {:>10} {:<20} {} {}{}",
                    m.id,
                    m.state.as_str(),
                    m.attempts,
                    m.target,
                    m.body_bytes,
                    format_ms(m.created_at),
                    m.method,
                    m.path,
                    m.last_error
                        .as_deref()
                        .map(|e| format!(" — {e}"))
                        .unwrap_or_default()
                );
            }
        }
        QueueCommand::Show { id } => {
            let m = message(&store, &id).await?;
            show_message(&store, &m).await?;
        }
        QueueCommand::Retry { id } => {
            let m = message(&store, &id).await?;
            if !matches!(m.state, QueueState::Failed | QueueState::Expired) {
                bail!(
                    "message {id} is {}: only failed or expired messages can be retried",
                    m.state.as_str()
                );
            }
            let settings = store.queue_settings(&m.tenant_id).await?;
            let ttl = ttl_of(&settings, config);
            let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
            if !store.requeue_message(&m.id, ttl_ms).await? {
                let now = message(&store, &id).await?;
                if matches!(now.state, QueueState::Failed | QueueState::Expired) {
                    bail!("message {id} cannot be retried: its request body is no longer stored");
                }
                bail!("message {id} is {} now; nothing done", now.state.as_str());
            }
            // Running nodes look now rather than at their next poll (PostgreSQL).
            store.notify_queue().await?;
            store
                .record_admin_action(CLI_ACTOR, "queue.retry", &format!("{}/{}", m.tenant, m.id))
                .await?;
            println!(
                "message {id} of tenant {} is queued again: due now, expires in {}",
                m.tenant,
                humantime::format_duration(ttl)
            );
        }
        QueueCommand::Discard { id } => {
            let m = message(&store, &id).await?;
            let said = match store.discard_message(&m.id).await? {
                Discarded::Cancelled => "cancelled: it will not be delivered",
                Discarded::Deleted => "deleted with its body and response",
                Discarded::Too(state) => bail!(
                    "message {id} is {}: only queued, failed, expired or cancelled messages can \
                     be discarded",
                    state.as_str()
                ),
                Discarded::NotFound => bail!("no queue message has the id {id}"),
            };
            store
                .record_admin_action(
                    CLI_ACTOR,
                    "queue.discard",
                    &format!("{}/{}", m.tenant, m.id),
                )
                .await?;
            println!("message {id} of tenant {} {said}", m.tenant);
        }
    }
    Ok(())
}

/// The settings `args` ask for, on top of `old`; refuses values out of range.
fn change(
    args: &TenantQueueArgs,
    old: QueueSettings,
    config: &Config,
) -> anyhow::Result<QueueSettings> {
    let mut s = old;
    if args.ordered {
        s.ordered = true;
    }
    if args.parallel {
        s.ordered = false;
    }
    if args.default_ttl {
        s.ttl_ms = None;
    }
    if let Some(ttl) = args.ttl {
        let max = config.queue.max_ttl;
        if ttl < Duration::from_secs(1) {
            bail!("--ttl must be at least 1s");
        }
        if ttl > max {
            bail!(
                "--ttl {} is longer than the relay's queue.max_ttl ({})",
                humantime::format_duration(ttl),
                humantime::format_duration(max)
            );
        }
        s.ttl_ms = Some(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
    }
    if args.default_max_messages {
        s.max_messages = None;
    }
    if let Some(n) = args.max_messages {
        s.max_messages = Some(quota("--max-messages", n)?);
    }
    if args.default_max_bytes {
        s.max_bytes = None;
    }
    if let Some(n) = args.max_bytes {
        s.max_bytes = Some(quota("--max-bytes", n)?);
    }
    Ok(s)
}

fn quota(flag: &str, n: u64) -> anyhow::Result<i64> {
    match i64::try_from(n) {
        Ok(n) if n >= 1 => Ok(n),
        _ => bail!("{flag} must be 1 to {}", i64::MAX),
    }
}

/// The time to live a tenant's messages get: its own (capped by queue.max_ttl, as the relay
/// caps it when accepting) or the relay's.
fn ttl_of(s: &QueueSettings, config: &Config) -> Duration {
    s.ttl_ms
        .map(|ms| Duration::from_millis(ms.max(1) as u64))
        .unwrap_or(config.queue.ttl)
        .min(config.queue.max_ttl)
}

async fn show_tenant_queue(
    store: &Store,
    t: &Tenant,
    s: &QueueSettings,
    config: &Config,
) -> anyhow::Result<()> {
    let q = &config.queue;
    let own = |set: bool| if set { "" } else { " (relay default)" };
    println!("tenant:        {}", t.name);
    println!(
        "order:         {}",
        if s.ordered {
            "ordered (per target, one message at a time)"
        } else {
            "parallel"
        }
    );
    println!(
        "ttl:           {}{}",
        humantime::format_duration(ttl_of(s, config)),
        own(s.ttl_ms.is_some())
    );
    println!(
        "max messages:  {}{}",
        s.max_messages.map_or(q.max_messages, |n| n.max(0) as u64),
        own(s.max_messages.is_some())
    );
    println!(
        "max bytes:     {}{}",
        s.max_bytes.map_or(q.max_bytes, |n| n.max(0) as u64),
        own(s.max_bytes.is_some())
    );
    let counts = store.queue_counts(Some(&t.id.0)).await?;
    for state in QueueState::ALL {
        let n = counts.by_state.get(&state).copied().unwrap_or(0);
        let label = format!("{}:", state.as_str());
        match (state, counts.oldest_queued_at) {
            (QueueState::Queued, Some(at)) if n > 0 => println!(
                "{label:<14} {n} (oldest waiting {})",
                humantime::format_duration(age(at))
            ),
            _ => println!("{label:<14} {n}"),
        }
    }
    Ok(())
}

async fn show_message(store: &Store, m: &QueueMessage) -> anyhow::Result<()> {
    let opt = |t: Option<i64>| t.map(format_ms).unwrap_or_else(|| "-".into());
    println!("id:            {}", m.id);
    println!("tenant:        {}", m.tenant);
    println!("target:        {}", m.target);
    println!("request:       {} {}", m.method, m.path);
    println!("state:         {}", m.state.as_str());
    println!("attempts:      {}", m.attempts);
    println!("last error:    {}", m.last_error.as_deref().unwrap_or("-"));
    println!("accepted:      {}", format_ms(m.created_at));
    println!("expires:       {}", format_ms(m.expires_at));
    if m.state == QueueState::Queued {
        println!("next attempt:  {}", format_ms(m.next_attempt_at));
    }
    println!("finished:      {}", opt(m.finished_at));
    if let Some(key) = &m.idempotency_key {
        println!("idempotency:   {key}");
    }
    match m.response_status {
        Some(status) if m.response_truncated => {
            println!("response:      {status} (body cut at the relay's limit)")
        }
        Some(status) => println!("response:      {status}"),
        None => println!("response:      -"),
    }
    if m.purged {
        println!("(purged: the retention period is over; bodies and headers are gone)");
        return Ok(());
    }
    let Some(p) = store.message_preview(&m.id).await? else {
        return Ok(());
    };
    println!("\nrequest headers:");
    for (name, value) in header_list(&p.headers) {
        println!("  {name}: {value}");
    }
    print_body("request body", m.body_bytes, p.body.as_deref());
    if let Some(h) = &p.response_headers {
        println!("\nresponse headers:");
        for (name, value) in header_list(h) {
            println!("  {name}: {value}");
        }
        if let Some(b) = &p.response_body {
            print_body("response body", -1, Some(b));
        }
    }
    Ok(())
}

/// The first KiB of a body (`total` bytes long; -1 when unknown), as text or base64.
fn print_body(what: &str, total: i64, start: Option<&[u8]>) {
    let Some(start) = start else {
        println!("\n{what} ({total} bytes): no longer stored");
        return;
    };
    let size = if total >= 0 {
        format!("{total} bytes")
    } else {
        "stored".into()
    };
    let cut = if start.len() == PREVIEW_BYTES && total != PREVIEW_BYTES as i64 {
        format!(", the first {PREVIEW_BYTES}")
    } else {
        String::new()
    };
    match BodyPreview::of(start) {
        BodyPreview::Text(s) => println!("\n{what} ({size}{cut}):\n{s}"),
        BodyPreview::Base64(s) => println!("\n{what} ({size}{cut}, base64):\n{s}"),
    }
}

/// Stored headers as name and value, base64 values marked.
fn header_list(encoded: &str) -> Vec<(String, String)> {
    relay_store::decode_headers(encoded)
        .into_iter()
        .map(|h| {
            let value = if h.base64 {
                format!("(base64) {}", h.value)
            } else {
                h.value
            };
            (h.name, value)
        })
        .collect()
}

fn parse_state(s: &str) -> anyhow::Result<QueueState> {
    QueueState::parse(&s.to_ascii_lowercase()).with_context(|| {
        let all: Vec<&str> = QueueState::ALL.iter().map(|s| s.as_str()).collect();
        format!("--state {s}: use one of {}", all.join(", "))
    })
}

async fn tenant(store: &Store, name: &str) -> anyhow::Result<Tenant> {
    match store.tenant(name).await? {
        Some(t) => Ok(t),
        None => bail!("tenant {name} not found (`relay-server tenant list` shows them)"),
    }
}

async fn message(store: &Store, id: &str) -> anyhow::Result<QueueMessage> {
    match store.message(id.trim()).await? {
        Some(m) => Ok(m),
        None => bail!("no queue message has the id {id}"),
    }
}

/// How long ago `at` (ms since the epoch) was, to the second.
fn age(at: i64) -> Duration {
    Duration::from_secs((relay_store::now_ms().saturating_sub(at).max(0) / 1000) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_headers_read_back_as_text() {
        let h = header_list(r#"[{"n":"content-type","v":"text/plain"},{"n":"x-bin","b":"6Xg="}]"#);
        assert_eq!(
            h,
            [
                ("content-type".to_string(), "text/plain".to_string()),
                ("x-bin".to_string(), "(base64) 6Xg=".to_string()),
            ]
        );
        assert!(header_list("not json").is_empty());
    }

    #[test]
    fn states_parse_in_any_case() {
        assert_eq!(parse_state("Failed").unwrap(), QueueState::Failed);
        let err = parse_state("lost").unwrap_err().to_string();
        assert!(err.contains("queued, delivering"), "{err}");
    }
}
