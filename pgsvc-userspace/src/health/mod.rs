//! HAProxy-compatible health checking of Patroni's REST API.
