"""The simulated cloud for the demo, the tests and the benchmarks: moto for EC2 and S3,
and for every running instance a host on its own loopback address with an SSH server
(the host agent's commands) and the RLN REST API. It shares no code with the fleet: it
stands for the outside world, and the fleet reaches it only over the network."""
