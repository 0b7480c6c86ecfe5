pub mod appliance;
pub mod frames;
