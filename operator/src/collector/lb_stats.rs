//! What each HAProxy replica of a cluster's load balancer thinks of its broker servers, read from
//! its stats page (`/stats;csv` on [`STATS_PORT`]): the real state the load balancer acts on, as
//! opposed to the state the agents were asked to set.

use std::time::Duration;

use serde::Serialize;

use crate::load_balancer::haproxy_cfg::MQTT_BACKEND;
#[cfg(doc)]
use crate::resources::load_balancer::STATS_PORT;

/// Time limit of one stats request.
pub const STATS_TIMEOUT: Duration = Duration::from_secs(5);

/// One broker server as one HAProxy replica sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServerState {
    /// The HAProxy Pod.
    pub lb_pod: String,
    /// The server (named after the broker Pod).
    pub server: String,
    /// HAProxy's status: `UP`, `DOWN`, `DRAIN`, `MAINT`, `no check`, or a transition such as
    /// `UP 1/3` (going down) and `DOWN 1/2` (coming up).
    pub status: String,
    /// The last health check's result, for example `L7OK` or `L4CON`, with its description.
    pub check: String,
    /// The server's address, when HAProxy reports it.
    pub address: Option<String>,
}

impl ServerState {
    /// HAProxy does not send new clients to it because its health checks fail (`DOWN`, or
    /// `DOWN 1/2` while it is coming back); not for servers put in maintenance or drain on
    /// purpose.
    pub fn is_down(&self) -> bool {
        self.status == "DOWN" || self.status.starts_with("DOWN ")
    }
}

/// The load balancer as one round saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LbSample {
    /// Every server of the plain MQTT backend, per HAProxy replica that answered.
    pub servers: Vec<ServerState>,
    /// HAProxy replicas that could not be asked, with why.
    pub unreachable: Vec<(String, String)>,
}

/// Why a stats page could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The request failed or timed out.
    #[error("stats of {pod}: {source}")]
    Request {
        /// The HAProxy Pod.
        pod: String,
        /// What failed.
        source: reqwest::Error,
    },
    /// The page is not HAProxy's CSV.
    #[error("stats of {pod}: {why}")]
    Format {
        /// The HAProxy Pod.
        pod: String,
        /// What is wrong with it.
        why: String,
    },
}

/// Reads the plain MQTT backend's servers from the HAProxy replica `pod` at `ip` (its stats
/// frontend listens on `port`: [`STATS_PORT`] in Mooring's load balancer Pods).
pub async fn fetch(
    http: &reqwest::Client,
    pod: &str,
    ip: &str,
    port: u16,
) -> Result<Vec<ServerState>, StatsError> {
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    let url = format!("http://{host}:{port}/stats;csv");
    let request = |source| StatsError::Request {
        pod: pod.to_string(),
        source,
    };
    let text = http
        .get(&url)
        .timeout(STATS_TIMEOUT)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(request)?
        .text()
        .await
        .map_err(request)?;
    parse_csv(&text, MQTT_BACKEND, pod).map_err(|why| StatsError::Format {
        pod: pod.to_string(),
        why,
    })
}

/// The servers of `backend` in HAProxy's stats CSV (its header line names the columns, so the
/// column order of any HAProxy version works).
pub fn parse_csv(text: &str, backend: &str, lb_pod: &str) -> Result<Vec<ServerState>, String> {
    let mut lines = text.lines();
    let header = lines
        .next()
        .and_then(|h| h.strip_prefix("# "))
        .ok_or("no '# pxname,svname,...' header line")?;
    let columns: Vec<&str> = header.split(',').collect();
    let index = |name: &str| columns.iter().position(|c| *c == name);
    let (Some(px), Some(sv), Some(status)) = (index("pxname"), index("svname"), index("status"))
    else {
        return Err("the header lacks pxname, svname or status".into());
    };
    let check = index("check_status");
    let check_desc = index("check_desc");
    let addr = index("addr");
    let mut servers = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(',').collect();
        let field = |i: Option<usize>| i.and_then(|i| fields.get(i)).copied().unwrap_or("");
        if field(Some(px)) != backend || matches!(field(Some(sv)), "FRONTEND" | "BACKEND") {
            continue;
        }
        let mut check_text = field(check).trim_start_matches('*').to_string();
        let desc = field(check_desc);
        if !desc.is_empty() {
            check_text = format!("{check_text} ({desc})");
        }
        servers.push(ServerState {
            lb_pod: lb_pod.to_string(),
            server: field(Some(sv)).to_string(),
            status: field(Some(status)).to_string(),
            check: check_text,
            address: Some(field(addr).to_string()).filter(|a| !a.is_empty()),
        });
    }
    Ok(servers)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Trimmed from HAProxy 2.6's `/stats;csv` (real column names, fewer columns).
    const CSV: &str = "\
# pxname,svname,qcur,scur,status,weight,check_status,check_desc,addr,
stats,FRONTEND,,,OPEN,,,,,
mqtt,FRONTEND,,,OPEN,,,,,
mqtt,bus-0,0,2,UP,1,L7OK,Layer7 check passed,10.0.0.5:1883,
mqtt,bus-1,0,0,DOWN,1,*L4CON,Layer4 connection problem,10.0.0.6:1883,
mqtt,bus-2,0,0,MAINT,1,,,10.0.0.7:1883,
mqtt,bus-3,0,0,DOWN 1/2,1,L7OK,Layer7 check passed,10.0.0.8:1883,
mqtt,BACKEND,0,2,UP,3,,,,
mqtt_ws,bus-0,0,0,DOWN,1,L4CON,,10.0.0.5:15675,
";

    #[test]
    fn the_mqtt_backends_servers_are_read_from_the_csv() {
        let servers = parse_csv(CSV, "mqtt", "bus-lb-0").unwrap();
        let names: Vec<&str> = servers.iter().map(|s| s.server.as_str()).collect();
        assert_eq!(names, ["bus-0", "bus-1", "bus-2", "bus-3"]);
        assert_eq!(servers[0].status, "UP");
        assert_eq!(servers[0].address.as_deref(), Some("10.0.0.5:1883"));
        assert_eq!(servers[1].check, "L4CON (Layer4 connection problem)");
        assert!(servers.iter().all(|s| s.lb_pod == "bus-lb-0"));
    }

    #[test]
    fn only_failed_checks_count_as_down() {
        let servers = parse_csv(CSV, "mqtt", "lb").unwrap();
        let down: Vec<&str> = servers
            .iter()
            .filter(|s| s.is_down())
            .map(|s| s.server.as_str())
            .collect();
        // MAINT (a stray node taken out on purpose) is not down; "DOWN 1/2" is coming back.
        assert_eq!(down, ["bus-1", "bus-3"]);
    }

    #[test]
    fn a_page_that_is_not_haproxy_csv_is_an_error() {
        assert!(parse_csv("<html>", "mqtt", "lb").is_err());
        assert!(parse_csv("# a,b,c\n", "mqtt", "lb").is_err());
        assert_eq!(
            parse_csv("# pxname,svname,status\n", "mqtt", "lb"),
            Ok(vec![])
        );
    }
}
