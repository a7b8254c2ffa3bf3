package dagfs.minidfs;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.Properties;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.minikdc.MiniKdc;
import org.apache.hadoop.security.UserGroupInformation;

/**
 * The secure mode of the launcher ({@code --secure}): an in-process KDC (Hadoop's MiniKdc),
 * Kerberos RPC authentication, block access tokens and SASL data-transfer protection, set up
 * the way Hadoop's own secure MiniDFS tests do (TestSecureNNWithQJM, SaslDataTransferTestCase),
 * except that the DataNodes skip the privileged-port/HTTPS check
 * ({@code ignore.secure.ports.for.testing}): SASL still protects every block transfer.
 *
 * <p>Written next to the client configuration in {@code --conf-dir}:
 * <ul>
 *   <li>{@code krb5.conf}: for MIT Kerberos clients (point {@code KRB5_CONFIG} at it);
 *   <li>{@code dagfs.keytab} (mode 0600): the client principal {@link #CLIENT}{@code @REALM};
 *   <li>{@code kerberos.env}: {@code KRB5_CONFIG}, the principal and the keytab as shell lines.
 * </ul>
 * The client principal is a member of HDFS's {@code supergroup}, so it may write anywhere.
 */
final class Secure {
  /** The client principal's name (without the realm). */
  static final String CLIENT = "dagfs";
  private static final String HOST = "localhost";

  private final MiniKdc kdc;

  private Secure(MiniKdc kdc) {
    this.kdc = kdc;
  }

  /**
   * Starts the KDC, creates the principals and switches {@code conf} (and this JVM's login)
   * to Kerberos. {@code ticketLifetime} (seconds, 0 = the KDC's default of a day) bounds every
   * ticket the KDC issues, so expiry can be tested in seconds.
   */
  static Secure start(Configuration conf, File baseDir, File confDir, long ticketLifetime,
      String protection) throws Exception {
    File kdcDir = new File(baseDir, "kdc");
    Files.createDirectories(kdcDir.toPath());
    Properties kdcConf = MiniKdc.createConf();
    if (ticketLifetime > 0) {
      kdcConf.setProperty(MiniKdc.MAX_TICKET_LIFETIME, Long.toString(ticketLifetime));
      kdcConf.setProperty(MiniKdc.MIN_TICKET_LIFETIME, "1");
    }
    MiniKdc kdc = new MiniKdc(kdcConf, kdcDir);
    kdc.start();

    // The services run as the OS user (as TestSecureNNWithQJM does), so HDFS's superuser is
    // the same with or without Kerberos.
    String user = System.getProperty("user.name");
    File serviceKeytab = new File(kdcDir, "services.keytab");
    kdc.createPrincipal(serviceKeytab, user + "/" + HOST, "HTTP/" + HOST);
    String realm = kdc.getRealm();
    String service = user + "/" + HOST + "@" + realm;
    String spnego = "HTTP/" + HOST + "@" + realm;

    conf.set("hadoop.security.authentication", "kerberos");
    conf.set("dfs.namenode.kerberos.principal", service);
    conf.set("dfs.namenode.keytab.file", serviceKeytab.getAbsolutePath());
    conf.set("dfs.datanode.kerberos.principal", service);
    conf.set("dfs.datanode.keytab.file", serviceKeytab.getAbsolutePath());
    conf.set("dfs.web.authentication.kerberos.principal", spnego);
    conf.set("dfs.web.authentication.kerberos.keytab", serviceKeytab.getAbsolutePath());
    conf.set("dfs.namenode.kerberos.internal.spnego.principal", spnego);
    conf.setBoolean("dfs.block.access.token.enable", true);
    conf.set("dfs.data.transfer.protection", protection);
    conf.set("dfs.http.policy", "HTTP_ONLY");
    conf.setBoolean("ignore.secure.ports.for.testing", true);
    // A client principal that is no OS user: give it HDFS's superuser group.
    conf.set("hadoop.user.group.static.mapping.overrides", "dr.who=;" + CLIENT + "=supergroup");
    if (ticketLifetime > 0) {
      // Keytab logins (the launcher's, the DataNodes') renew themselves, and may log in again
      // at once when a ticket expired: Hadoop otherwise waits 60 s between logins.
      conf.setBoolean("hadoop.kerberos.keytab.login.autorenewal.enabled", true);
      conf.setLong("hadoop.kerberos.min.seconds.before.relogin", 1);
    }
    UserGroupInformation.setConfiguration(conf);
    // The launcher itself (waitActive's DataNode reports, commands) acts as the services.
    UserGroupInformation.loginUserFromKeytab(service, serviceKeytab.getAbsolutePath());

    Secure secure = new Secure(kdc);
    secure.writeClientFiles(confDir);
    return secure;
  }

  /** Adds what a Kerberos client needs to the client configuration. */
  void configureClient(Configuration client, Configuration server) {
    for (String key : new String[] {"hadoop.security.authentication",
        "dfs.namenode.kerberos.principal", "dfs.datanode.kerberos.principal",
        "dfs.data.transfer.protection", "dfs.block.access.token.enable"}) {
      client.set(key, server.get(key));
    }
  }

  private void writeClientFiles(File confDir) throws Exception {
    Path dir = confDir.toPath();
    Files.createDirectories(dir);
    File keytab = dir.resolve(CLIENT + ".keytab").toFile();
    kdc.createPrincipal(keytab, CLIENT);
    Files.setPosixFilePermissions(keytab.toPath(), PosixFilePermissions.fromString("rw-------"));
    String realm = kdc.getRealm();
    // MIT Kerberos (libgssapi_krb5, kinit) must not canonicalize "localhost" through DNS:
    // the services' principals name it literally.
    String krb5 = String.join("\n",
        "[libdefaults]",
        "  default_realm = " + realm,
        "  dns_lookup_kdc = false",
        "  dns_lookup_realm = false",
        "  dns_canonicalize_hostname = false",
        "  rdns = false",
        "  udp_preference_limit = 1",
        "  forwardable = false",
        "[realms]",
        "  " + realm + " = {",
        "    kdc = 127.0.0.1:" + kdc.getPort(),
        "  }",
        "[domain_realm]",
        "  " + HOST + " = " + realm,
        "");
    write(dir.resolve("krb5.conf"), krb5);
    String env = String.join("\n",
        "KRB5_CONFIG=" + dir.resolve("krb5.conf"),
        "DAGFS_KERBEROS_PRINCIPAL=" + CLIENT + "@" + realm,
        "DAGFS_KERBEROS_KEYTAB=" + keytab.getAbsolutePath(),
        "");
    write(dir.resolve("kerberos.env"), env);
  }

  private static void write(Path path, String text) throws IOException {
    Path tmp = path.resolveSibling(path.getFileName() + ".tmp");
    Files.write(tmp, text.getBytes(StandardCharsets.UTF_8));
    Files.move(tmp, path, java.nio.file.StandardCopyOption.REPLACE_EXISTING,
        java.nio.file.StandardCopyOption.ATOMIC_MOVE);
  }

  void stop() {
    kdc.stop();
  }
}
