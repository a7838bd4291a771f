"""Running the network: inference backends chosen by measurement, and the numeric libraries' threads."""
