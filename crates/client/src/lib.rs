//! # sagitta-client
//!
//! MQTT client library (under construction).
