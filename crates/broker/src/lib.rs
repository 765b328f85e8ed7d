//! # sagitta-broker
//!
//! MQTT broker library (under construction).
