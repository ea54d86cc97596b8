"""The refill daemon: config, Agora client, shared budget, scheduler, CLI and simulator."""
