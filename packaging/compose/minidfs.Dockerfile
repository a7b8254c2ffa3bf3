# A small HDFS for the Compose trial: the project's MiniDFS launcher (tests/minidfs: Hadoop's
# MiniDFSCluster, one NameNode and one DataNode, permissions on) on a JRE. Built by
# scripts/minidfs-image from a context holding only the launcher and its jars. Not for
# production: data lives in the container and goes with it.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update -qq && \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      openjdk-17-jre-headless >/dev/null && \
    rm -rf /var/lib/apt/lists/*
COPY lib/ /opt/minidfs/lib/
COPY classes/ /opt/minidfs/classes/
# The client configuration (core-site.xml, hdfs-site.xml) goes to /conf: share it with the
# dagfs containers as HADOOP_CONF_DIR. The launcher runs until its standard input closes
# (keep it open: `stdin_open: true` in Compose, `docker run -i`).
VOLUME /conf
EXPOSE 8020
ENTRYPOINT ["java", "-cp", "/opt/minidfs/classes:/opt/minidfs/lib/*", "dagfs.minidfs.Main", \
            "--conf-dir", "/conf", "--base-dir", "/data", "--namenode-port", "8020"]
