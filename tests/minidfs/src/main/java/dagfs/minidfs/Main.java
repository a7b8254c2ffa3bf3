package dagfs.minidfs;

import java.io.BufferedReader;
import java.io.File;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.io.PrintStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.hdfs.MiniDFSCluster;
import org.apache.hadoop.hdfs.MiniDFSNNTopology;

/**
 * Starts Hadoop's MiniDFSCluster on loopback for dagfs tests, benches and people.
 *
 * <p>Protocol (stdout carries only these lines, Hadoop logs go to stderr):
 *
 * <ul>
 *   <li>On start: {@code READY <defaultFS>} once the cluster is active and the client
 *       configuration ({@code core-site.xml}, {@code hdfs-site.xml}; with {@code --secure} also
 *       {@code krb5.conf}, the client keytab and {@code kerberos.env}, see {@link Secure}) is
 *       written to {@code --conf-dir}.
 *   <li>Then one command per stdin line, each answered by {@code OK} or {@code ERR <reason>}:
 *       {@code stop-namenode [i]}, {@code restart-namenode [i]}, {@code stop-datanode i},
 *       {@code restart-datanode i}, {@code transition-to-active i}, {@code transition-to-standby i},
 *       {@code ping}, {@code shutdown}.
 *   <li>End of stdin (the controlling process died or closed the pipe) shuts the cluster
 *       down and exits, so no JVM outlives its owner.
 * </ul>
 */
public final class Main {
  private static final String NAMESERVICE = "dagfs-ha";
  private static final String VIEWFS_CLUSTER = "dagfs-view";

  private final PrintStream out;
  private final MiniDFSCluster cluster;
  private final boolean ha;
  private final Configuration conf;
  /** DataNodes stopped by {@code stop-datanode}, by index, for {@code restart-datanode}. */
  private final java.util.Map<Integer, MiniDFSCluster.DataNodeProperties> stopped =
      new java.util.HashMap<>();
  private final Secure secure;

  private Main(PrintStream out, MiniDFSCluster cluster, boolean ha, Configuration conf,
      Secure secure) {
    this.out = out;
    this.cluster = cluster;
    this.ha = ha;
    this.conf = conf;
    this.secure = secure;
  }

  public static void main(String[] args) throws Exception {
    // Everything Hadoop prints goes to stderr; stdout is the protocol channel.
    PrintStream protocol = new PrintStream(new FileOutputStream(java.io.FileDescriptor.out), true,
        StandardCharsets.UTF_8);
    System.setOut(System.err);

    Options opts;
    try {
      opts = Options.parse(args);
    } catch (IllegalArgumentException e) {
      System.err.println("minidfs: " + e.getMessage());
      System.err.println(Options.USAGE);
      System.exit(2);
      return;
    }

    Configuration conf = new Configuration();
    conf.set(MiniDFSCluster.HDFS_MINIDFS_BASEDIR, opts.baseDir.getAbsolutePath());
    conf.setBoolean("dfs.permissions.enabled", true);
    // Small blocks keep multi-block files cheap in tests; replication follows the DataNodes.
    conf.setLong("dfs.blocksize", opts.blockSize);
    conf.setLong("dfs.namenode.fs-limits.min-block-size", 4096);
    conf.setInt("dfs.replication", Math.min(3, opts.dataNodes));
    // Let a restarted NameNode leave safe mode at once.
    conf.setInt("dfs.namenode.safemode.extension", 0);
    conf.setBoolean("dfs.namenode.name.cache.threshold.enabled", false);
    if (opts.fastClose) {
      // Let complete() succeed before the DataNode's block report arrives, as busy clusters
      // are often configured; otherwise every small-file close waits ~0.5 s for it.
      conf.setInt("dfs.namenode.file.close.num-committed-allowed", 1);
    }

    Secure secure = null;
    if (opts.secure) {
      secure = Secure.start(conf, opts.baseDir, opts.confDir, opts.ticketLifetime,
          opts.protection);
    }

    MiniDFSCluster.Builder builder = new MiniDFSCluster.Builder(conf)
        .numDataNodes(opts.dataNodes)
        .format(true);
    if (opts.ha && opts.nameNodePort != 0) {
      builder.nnTopology(MiniDFSNNTopology.simpleHATopology(2, opts.nameNodePort));
    } else if (opts.ha) {
      // simpleHATopology(2, 0) would give the NameNodes the fixed ports 0..3 (HTTP on 1 and
      // 3), which clash between two HA clusters on one machine: take free ones.
      int[] ports = freePorts(4);
      builder.nnTopology(new MiniDFSNNTopology().addNameservice(
          new MiniDFSNNTopology.NSConf("minidfs-ns")
              .addNN(new MiniDFSNNTopology.NNConf("nn0").setIpcPort(ports[0]).setHttpPort(ports[1]))
              .addNN(new MiniDFSNNTopology.NNConf("nn1").setIpcPort(ports[2]).setHttpPort(ports[3]))));
    } else {
      int[] ports = freePorts(2);
      builder.nameNodePort(opts.nameNodePort != 0 ? opts.nameNodePort : ports[0])
          .nameNodeHttpPort(ports[1]);
    }
    MiniDFSCluster cluster = builder.build();
    if (opts.ha) {
      cluster.transitionToActive(0);
    }
    cluster.waitActive();

    Main main = new Main(protocol, cluster, opts.ha, conf, secure);
    String defaultFs = main.writeClientConfig(opts.confDir);
    protocol.println("READY " + defaultFs);
    main.serve();
  }

  /**
   * {@code n} distinct ports free on loopback right now, below Linux's ephemeral range
   * (32768-60999). A NameNode restarts on its old ports; one in the ephemeral range can be
   * taken meanwhile as the local port of any outgoing connection on the machine, and the
   * restart then fails with "Port in use" (seen in CI after a 50 s outage).
   */
  private static int[] freePorts(int n) throws IOException {
    java.util.Random random = new java.util.Random();
    int[] ports = new int[n];
    int found = 0;
    for (int attempt = 0; found < n && attempt < 10_000; attempt++) {
      int port = 10_000 + random.nextInt(22_000);
      boolean taken = false;
      for (int i = 0; i < found; i++) {
        taken |= ports[i] == port;
      }
      if (taken) {
        continue;
      }
      try (java.net.ServerSocket socket =
          new java.net.ServerSocket(port, 1, java.net.InetAddress.getLoopbackAddress())) {
        ports[found++] = port;
      } catch (IOException inUse) {
        // try another
      }
    }
    if (found < n) {
      throw new IOException("no " + n + " free ports on loopback between 10000 and 32000");
    }
    return ports;
  }

  /** Writes core-site.xml and hdfs-site.xml for clients; returns the default file system URL. */
  private String writeClientConfig(File confDir) throws IOException {
    Files.createDirectories(confDir.toPath());
    Configuration client = new Configuration(false);
    String defaultFs;
    if (ha) {
      defaultFs = "hdfs://" + NAMESERVICE;
      client.set("dfs.nameservices", NAMESERVICE);
      client.set("dfs.ha.namenodes." + NAMESERVICE, "nn0,nn1");
      for (int i = 0; i < 2; i++) {
        InetSocketAddress addr = cluster.getNameNode(i).getNameNodeAddress();
        client.set("dfs.namenode.rpc-address." + NAMESERVICE + ".nn" + i,
            "127.0.0.1:" + addr.getPort());
      }
      client.set("dfs.client.failover.proxy.provider." + NAMESERVICE,
          "org.apache.hadoop.hdfs.server.namenode.ha.ConfiguredFailoverProxyProvider");
    } else {
      defaultFs = "hdfs://127.0.0.1:" + cluster.getNameNodePort();
    }
    client.set("fs.defaultFS", defaultFs);
    // A viewfs mount table whose /airflow link points into this cluster, for viewfs:// tests.
    client.set("fs.viewfs.mounttable." + VIEWFS_CLUSTER + ".link./airflow", defaultFs + "/airflow");
    // hdfs-native requires a fallback link in every viewfs mount table.
    client.set("fs.viewfs.mounttable." + VIEWFS_CLUSTER + ".linkFallback", defaultFs + "/");
    client.set("dfs.replication", Integer.toString(Math.min(3, cluster.getDataNodes().size())));
    if (secure != null) {
      secure.configureClient(client, conf);
    }

    for (String name : new String[] {"core-site.xml", "hdfs-site.xml"}) {
      Path tmp = confDir.toPath().resolve(name + ".tmp");
      try (OutputStream os = Files.newOutputStream(tmp)) {
        client.writeXml(os);
      }
      Files.move(tmp, confDir.toPath().resolve(name), StandardCopyOption.REPLACE_EXISTING,
          StandardCopyOption.ATOMIC_MOVE);
    }
    return defaultFs;
  }

  /** Answers commands on stdin until "shutdown" or end of input. */
  private void serve() throws IOException {
    BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
    String line;
    while ((line = in.readLine()) != null) {
      line = line.trim();
      if (line.isEmpty()) {
        continue;
      }
      if (line.equals("shutdown")) {
        break;
      }
      try {
        run(line.split("\\s+"));
        out.println("OK");
      } catch (Exception e) {
        e.printStackTrace(System.err);
        out.println("ERR " + String.valueOf(e.getMessage()).replace('\n', ' '));
      }
    }
    cluster.shutdown(true);
    if (secure != null) {
      secure.stop();
    }
    out.println("BYE");
    System.exit(0);
  }

  private void run(String[] cmd) throws Exception {
    int index = cmd.length > 1 ? Integer.parseInt(cmd[1]) : 0;
    switch (cmd[0]) {
      case "ping":
        break;
      case "stop-namenode":
        cluster.shutdownNameNode(index);
        break;
      case "restart-namenode":
        cluster.restartNameNode(index, true);
        if (ha && !cluster.getNameNode(index).isActiveState()) {
          // An HA NameNode restarts as standby; the caller decides which one is active.
          break;
        }
        cluster.waitActive(index);
        break;
      case "stop-datanode":
        MiniDFSCluster.DataNodeProperties properties = cluster.stopDataNode(index);
        if (properties == null) {
          throw new IllegalArgumentException("no running DataNode " + index);
        }
        stopped.put(index, properties);
        break;
      case "restart-datanode":
        // The stopped DataNode comes back on its old ports with its blocks, as a host that
        // rebooted; restartDataNodes() would only restart the ones still running.
        MiniDFSCluster.DataNodeProperties node = stopped.remove(index);
        if (node == null) {
          throw new IllegalArgumentException("DataNode " + index + " was not stopped");
        }
        cluster.restartDataNode(node, true);
        cluster.waitActive();
        break;
      case "transition-to-active":
        cluster.transitionToActive(index);
        break;
      case "transition-to-standby":
        cluster.transitionToStandby(index);
        break;
      default:
        throw new IllegalArgumentException("unknown command '" + cmd[0] + "'");
    }
  }

  /** Command-line options. */
  private static final class Options {
    static final String USAGE = "usage: minidfs --conf-dir DIR --base-dir DIR [--datanodes N] "
        + "[--ha] [--namenode-port P] [--block-size BYTES] [--fast-close] "
        + "[--secure [--protection authentication|integrity|privacy] [--ticket-lifetime SECONDS]]";

    File confDir;
    File baseDir;
    int dataNodes = 1;
    boolean ha;
    int nameNodePort = 0;
    long blockSize = 1024 * 1024;
    boolean fastClose;
    boolean secure;
    String protection = "privacy";
    long ticketLifetime;

    static Options parse(String[] args) {
      Options o = new Options();
      for (int i = 0; i < args.length; i++) {
        String a = args[i];
        switch (a) {
          case "--conf-dir":
            o.confDir = new File(value(args, ++i, a));
            break;
          case "--base-dir":
            o.baseDir = new File(value(args, ++i, a));
            break;
          case "--datanodes":
            o.dataNodes = Integer.parseInt(value(args, ++i, a));
            break;
          case "--namenode-port":
            o.nameNodePort = Integer.parseInt(value(args, ++i, a));
            break;
          case "--block-size":
            o.blockSize = Long.parseLong(value(args, ++i, a));
            break;
          case "--ha":
            o.ha = true;
            break;
          case "--fast-close":
            o.fastClose = true;
            break;
          case "--secure":
            o.secure = true;
            break;
          case "--protection":
            o.protection = value(args, ++i, a);
            break;
          case "--ticket-lifetime":
            o.ticketLifetime = Long.parseLong(value(args, ++i, a));
            break;
          default:
            throw new IllegalArgumentException("unknown option '" + a + "'");
        }
      }
      if (o.confDir == null || o.baseDir == null) {
        throw new IllegalArgumentException("--conf-dir and --base-dir are required");
      }
      if (o.dataNodes < 1) {
        throw new IllegalArgumentException("--datanodes must be at least 1");
      }
      return o;
    }

    private static String value(String[] args, int i, String name) {
      if (i >= args.length) {
        throw new IllegalArgumentException(name + " needs a value");
      }
      return args[i];
    }
  }
}
