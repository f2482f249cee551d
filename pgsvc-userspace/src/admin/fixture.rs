//! A hand-built snapshot for the admin API's and `pgsvc status`'s tests: one healthy primary
//! service with a DOWN and a never-checked member, one service running on its backup.

use std::collections::BTreeMap;

use crate::status::{
    CheckStatus, DatapathStatus, ProcessStatus, ReloadStatus, STATUS_SCHEMA, ServerStatus,
    ServiceStatus, Status,
};

fn server(name: &str, addr: &str, state: &str) -> ServerStatus {
    ServerStatus {
        name: name.into(),
        addr: addr.into(),
        port: 6432,
        check_port: 8008,
        weight: 100,
        effective_weight: 100,
        state: state.into(),
        ..ServerStatus::default()
    }
}

pub(crate) fn sample_status() -> Status {
    let primary_1 = ServerStatus {
        active: true,
        health: 3,
        health_status: "UP 3/3".into(),
        last_check: Some(CheckStatus {
            passed: true,
            reason: "L7 OK".into(),
            code: Some(200),
            duration_ms: 2.0,
            code_name: "L7OK".into(),
        }),
        checks_total: 500,
        check_failures_total: 1,
        check_up_down_total: 0,
        last_change_seconds: Some(7380.0),
        current_sessions: 3,
        sessions_total: 120,
        bytes_in: 1_258_291,
        bytes_out: 8_808_038,
        ..server("pg-test-1", "198.18.0.11", "UP")
    };
    let primary_2 = ServerStatus {
        health: 0,
        health_status: "DOWN 0/2".into(),
        last_check: Some(CheckStatus {
            passed: false,
            reason: "L7 status 503".into(),
            code: Some(503),
            duration_ms: 3.5,
            code_name: "L7STS".into(),
        }),
        checks_total: 498,
        check_failures_total: 498,
        check_up_down_total: 2,
        last_change_seconds: Some(42.0),
        downtime_seconds: 1234.5,
        sessions_total: 7,
        bytes_in: 100,
        bytes_out: 2048,
        rst_sent: 4,
        ..server("pg-test-2", "198.18.0.12", "DOWN")
    };
    let primary_3 = ServerStatus {
        health_status: "UNKNOWN".into(),
        ..server("pg-test-3", "198.18.0.13", "UNKNOWN")
    };
    let primary = ServiceStatus {
        name: "pg-test-primary".into(),
        cluster: "pg-test".into(),
        ip: "*".into(),
        port: 5433,
        check: "/primary".into(),
        balance: "roundrobin".into(),
        maxconn: 5000,
        active_servers: 1,
        backup_servers: 0,
        current_sessions: 3,
        sessions_total: 127,
        bytes_in: 1_258_391,
        bytes_out: 8_810_086,
        rst_sent: 4,
        syn_dropped: 2,
        servers: vec![primary_1, primary_2, primary_3],
        ..ServiceStatus::default()
    };
    let offline_3 = ServerStatus {
        health_status: "DOWN 0/2".into(),
        last_check: Some(CheckStatus {
            passed: false,
            reason: "L4 timeout".into(),
            code: None,
            duration_ms: 3000.0,
            code_name: "L4TOUT".into(),
        }),
        check_failures_total: 9,
        check_up_down_total: 1,
        ..server("pg-test-3", "198.18.0.13", "DOWN")
    };
    let offline_1 = ServerStatus {
        backup: true,
        active: true,
        effective_weight: 50,
        health: 3,
        health_status: "UP 3/3".into(),
        last_check: Some(CheckStatus {
            passed: true,
            reason: "L7 OK".into(),
            code: Some(200),
            duration_ms: 0.4,
            code_name: "L7OK".into(),
        }),
        current_sessions: 1,
        sessions_total: 5,
        ..server("pg-test-1", "198.18.0.11", "UP")
    };
    let offline = ServiceStatus {
        name: "pg-test-offline".into(),
        cluster: "pg-test".into(),
        ip: "198.18.0.100".into(),
        port: 5438,
        check: "/replica".into(),
        balance: "leastconn".into(),
        maxconn: 3000,
        active_servers: 0,
        backup_servers: 1,
        using_backups: true,
        current_sessions: 1,
        sessions_total: 5,
        servers: vec![offline_3, offline_1],
        ..ServiceStatus::default()
    };
    Status {
        schema: STATUS_SCHEMA.into(),
        version: "0.1.0".into(),
        pid: 4242,
        started_at: 1_700_000_000.0,
        updated_at: 1_700_007_500.5,
        ready: true,
        config: "/etc/pigsty.yml".into(),
        clusters: vec!["pg-test".into()],
        iface: "eth0".into(),
        xdp_mode: "native".into(),
        snat_addr: "198.18.0.10".into(),
        vip: Some("198.18.0.100/24".into()),
        local_clients: "served (cgroup /sys/fs/cgroup)".into(),
        last_reload: Some(ReloadStatus {
            at: 1_700_007_320.5,
            ok: true,
            message: "reloaded: 2 services".into(),
        }),
        services: vec![primary, offline],
        datapath: DatapathStatus {
            flows: 12,
            max_flows: 65536,
            packets: BTreeMap::from([
                ("fwd_established".to_string(), 123_456),
                ("fwd_new".to_string(), 132),
                ("rst_no_flow".to_string(), 3),
                ("pass".to_string(), 0),
            ]),
            snat_ports: 20000,
            ..DatapathStatus::default()
        },
        process: ProcessStatus {
            cpu_seconds: 12.5,
            idle_percent: 97.0,
            nbthread: 2,
            max_fds: 1024,
            ..ProcessStatus::default()
        },
        dcs: Vec::new(),
        sessions_reset: Vec::new(),
    }
}
