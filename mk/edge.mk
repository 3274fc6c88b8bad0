# Regional edge: `ferry votes push|pull` read and load Redis sorted sets; its tests and the demo
# start a real redis-server on a free loopback port.
APT_PACKAGES += redis-server
