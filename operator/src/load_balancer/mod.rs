//! Mooring's sticky MQTT load balancer: HAProxy in front of the broker Pods, configured by pure
//! code.

pub mod haproxy_cfg;
pub mod proxy_header;
