// Command validate checks Handoff's deployment files without a cluster:
// it renders every Kustomize overlay and decodes each object strictly
// (unknown fields are errors) into its Kubernetes API type, and checks
// the Compose file's shape. It is its own Go module so that the
// Kubernetes libraries never move the versions the services build with.
package main

import (
	"bytes"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// types maps apiVersion/kind to a fresh typed object.
var types = map[string]func() any{
	"v1/Namespace":                           func() any { return &corev1.Namespace{} },
	"v1/ConfigMap":                           func() any { return &corev1.ConfigMap{} },
	"v1/Secret":                              func() any { return &corev1.Secret{} },
	"v1/Service":                             func() any { return &corev1.Service{} },
	"apps/v1/Deployment":                     func() any { return &appsv1.Deployment{} },
	"batch/v1/Job":                           func() any { return &batchv1.Job{} },
	"policy/v1/PodDisruptionBudget":          func() any { return &policyv1.PodDisruptionBudget{} },
	"autoscaling/v2/HorizontalPodAutoscaler": func() any { return &autoscalingv2.HorizontalPodAutoscaler{} },
	"networking.k8s.io/v1/NetworkPolicy":     func() any { return &networkingv1.NetworkPolicy{} },
}

func main() {
	root := "deploy"
	if len(os.Args) > 1 {
		root = os.Args[1]
	}
	failed := false
	examples, err := secretExamples(filepath.Join(root, "k8s", "secrets.example.yaml"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "secrets.example.yaml: %v\n", err)
		failed = true
	}
	overlays, _ := filepath.Glob(filepath.Join(root, "k8s", "overlays", "*"))
	for _, dir := range append([]string{filepath.Join(root, "k8s", "base")}, overlays...) {
		n, err := validateKustomization(dir, examples)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", dir, err)
			failed = true
			continue
		}
		fmt.Printf("%s: %d objects valid\n", dir, n)
	}
	if err := validateCompose(filepath.Join(root, "compose", "compose.yaml")); err != nil {
		fmt.Fprintf(os.Stderr, "compose: %v\n", err)
		failed = true
	} else {
		fmt.Println("compose: valid")
	}
	if failed {
		os.Exit(1)
	}
}

// secretExamples reads the example secrets, each decoded strictly, and
// returns their keys by secret name.
func secretExamples(path string) (map[string]map[string]bool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]map[string]bool{}
	for _, doc := range bytes.Split(b, []byte("\n---\n")) {
		var sec corev1.Secret
		if err := yaml.UnmarshalStrict(doc, &sec); err != nil {
			return nil, err
		}
		if sec.Kind != "Secret" || sec.Name == "" {
			return nil, fmt.Errorf("%q is not a named Secret", sec.Name)
		}
		keys := map[string]bool{}
		for k := range sec.StringData {
			keys[k] = true
		}
		out[sec.Name] = keys
	}
	return out, nil
}

// plainSecretKeys are the keys of the example secrets that are no secret
// (an id, a role's name) and may come as variables; every other key is
// mounted as a file.
var plainSecretKeys = map[string]bool{"HANDOFF_PAYLOAD_KEY_ID": true, "HANDOFF_APP_LOGIN_ROLE": true}

// secretVars are the settings that are secrets, which the processes take
// from files (NAME_FILE) mounted from a Secret: services/cmd/handoff's
// fileSecrets. In a ConfigMap or written into a pod's environment, a
// secret is in every reader's environment and readable by whoever may
// read ConfigMaps or pods.
var secretVars = map[string]bool{"HANDOFF_DATABASE_URL": true, "HANDOFF_PAYLOAD_KEYS": true, "HANDOFF_TEMPORAL_API_KEY": true,
	"HANDOFF_WEBHOOK_SECRET_KEY": true, "HANDOFF_WEBHOOK_PREVIOUS_SECRET_KEYS": true, "HANDOFF_APP_LOGIN_PASSWORD": true}

// checkConfigMap refuses a secret among a ConfigMap's settings.
func checkConfigMap(cm *corev1.ConfigMap) error {
	for k := range cm.Data {
		if secretVars[k] {
			return fmt.Errorf("configmap %s holds %s, a secret: put it in a Secret, mount it, and set %s_FILE", cm.Name, k, k)
		}
	}
	return nil
}

// checkSecretRefs requires every secret a pod names to be in the example
// secrets, so that the example is the whole list an operator must create,
// and each secret to reach the process as a file.
func checkSecretRefs(spec corev1.PodSpec, examples map[string]map[string]bool) error {
	var names []string
	mounted := func(name string, items []corev1.KeyToPath) error {
		names = append(names, name)
		for _, it := range items {
			if keys, ok := examples[name]; ok && !keys[it.Key] {
				return fmt.Errorf("secret %s key %s is not in secrets.example.yaml", name, it.Key)
			}
		}
		return nil
	}
	for _, v := range spec.Volumes {
		if v.Secret != nil {
			if err := mounted(v.Secret.SecretName, v.Secret.Items); err != nil {
				return err
			}
		}
		if v.Projected != nil {
			for _, src := range v.Projected.Sources {
				if src.Secret == nil {
					continue
				}
				if err := mounted(src.Secret.Name, src.Secret.Items); err != nil {
					return err
				}
			}
		}
	}
	for _, c := range append(spec.InitContainers, spec.Containers...) {
		for _, e := range c.EnvFrom {
			if e.SecretRef != nil {
				// Every key would land in the environment, secrets with it.
				return fmt.Errorf("container %s takes secret %s into its environment: mount it, and name each secret's file in HANDOFF_*_FILE", c.Name, e.SecretRef.Name)
			}
		}
		for _, e := range c.Env {
			if r := e.ValueFrom; r != nil && r.SecretKeyRef != nil {
				if !examples[r.SecretKeyRef.Name][r.SecretKeyRef.Key] {
					return fmt.Errorf("secret %s key %s is not in secrets.example.yaml", r.SecretKeyRef.Name, r.SecretKeyRef.Key)
				}
				if !plainSecretKeys[r.SecretKeyRef.Key] {
					return fmt.Errorf("container %s takes %s into its environment: mount it, and set %s_FILE", c.Name, r.SecretKeyRef.Key, r.SecretKeyRef.Key)
				}
			}
			if secretVars[e.Name] {
				return fmt.Errorf("container %s sets %s in its environment: put it in a Secret, mount it, and set %s_FILE", c.Name, e.Name, e.Name)
			}
		}
	}
	for _, n := range names {
		if _, ok := examples[n]; !ok {
			return fmt.Errorf("secret %s is not in secrets.example.yaml", n)
		}
	}
	return nil
}

func validateKustomization(dir string, examples map[string]map[string]bool) (int, error) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	res, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return 0, fmt.Errorf("kustomize: %w", err)
	}
	out, err := res.AsYaml()
	if err != nil {
		return 0, err
	}
	docs := bytes.Split(out, []byte("\n---\n"))
	deployments := map[string]bool{}
	// The fewest replicas each deployment may run (its own count, or its
	// autoscaler's minimum), and the pods each disruption budget keeps.
	fewest := map[string]int32{}
	keep := map[string]int32{}
	defaultDeny := false
	configMaps := map[string]map[string]string{}
	namespaced := false
	tlsOwner := map[string]string{} // each mTLS secret's deployment
	var probed []*appsv1.Deployment
	// The named container ports of each deployment's pods, by pod name
	// label, and the policies that name ports of pods they select: a name
	// no pod has matches nothing, and the policy would let nothing in.
	podPorts := map[string]map[string]bool{}
	podLabels := map[string]map[string]string{} // each deployment's pod labels, by name label
	var policies []*networkingv1.NetworkPolicy
	for _, doc := range docs {
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal(doc, &head); err != nil {
			return 0, err
		}
		mk, ok := types[head.APIVersion+"/"+head.Kind]
		if !ok {
			return 0, fmt.Errorf("%s %s: no type to check it against", head.APIVersion, head.Kind)
		}
		obj := mk()
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			return 0, fmt.Errorf("%s %s: %w", head.Kind, head.Metadata.Name, err)
		}
		if _, ok := obj.(*corev1.Secret); ok {
			// Applied with every rollout, it would overwrite the real one.
			return 0, fmt.Errorf("secret %s: secrets stay out of the kustomization (see secrets.example.yaml)", head.Metadata.Name)
		}
		if ns, ok := obj.(*corev1.Namespace); ok {
			namespaced = true
			if ns.Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
				return 0, fmt.Errorf("namespace %s must enforce the restricted Pod Security profile (label pod-security.kubernetes.io/enforce: restricted)", ns.Name)
			}
		}
		if cm, ok := obj.(*corev1.ConfigMap); ok {
			configMaps[cm.Name] = cm.Data
			if err := checkConfigMap(cm); err != nil {
				return 0, err
			}
		}
		if j, ok := obj.(*batchv1.Job); ok {
			if err := checkPodUser(j.Spec.Template.Spec); err != nil {
				return 0, fmt.Errorf("job %s: %w", j.Name, err)
			}
			// The migration runs as the schema owner: held to what every
			// deployment's containers are.
			for _, c := range append(slices.Clone(j.Spec.Template.Spec.InitContainers), j.Spec.Template.Spec.Containers...) {
				if err := checkContainerSecurity(c); err != nil {
					return 0, fmt.Errorf("job %s: %w", j.Name, err)
				}
				if err := checkResources(c); err != nil {
					return 0, fmt.Errorf("job %s: %w", j.Name, err)
				}
			}
			if err := checkSecretRefs(j.Spec.Template.Spec, examples); err != nil {
				return 0, fmt.Errorf("job %s: %w", j.Name, err)
			}
		}
		if np, ok := obj.(*networkingv1.NetworkPolicy); ok {
			policies = append(policies, np)
		}
		if np, ok := obj.(*networkingv1.NetworkPolicy); ok && len(np.Spec.PodSelector.MatchLabels) == 0 &&
			len(np.Spec.PodSelector.MatchExpressions) == 0 && len(np.Spec.Ingress) == 0 && len(np.Spec.Egress) == 0 &&
			len(np.Spec.PolicyTypes) == 2 {
			defaultDeny = true
		}
		if p, ok := obj.(*policyv1.PodDisruptionBudget); ok && p.Spec.MinAvailable != nil {
			keep[p.Name] = p.Spec.MinAvailable.IntVal
		}
		if h, ok := obj.(*autoscalingv2.HorizontalPodAutoscaler); ok && h.Spec.MinReplicas != nil {
			fewest[h.Spec.ScaleTargetRef.Name] = *h.Spec.MinReplicas
		}
		if d, ok := obj.(*appsv1.Deployment); ok {
			deployments[d.Name] = true
			named := map[string]bool{}
			for _, c := range d.Spec.Template.Spec.Containers {
				for _, p := range c.Ports {
					if p.Name != "" {
						named[p.Name] = true
					}
				}
			}
			podPorts[d.Spec.Template.Labels["app.kubernetes.io/name"]] = named
			podLabels[d.Spec.Template.Labels["app.kubernetes.io/name"]] = d.Spec.Template.Labels
			if _, set := fewest[d.Name]; !set && d.Spec.Replicas != nil {
				fewest[d.Name] = *d.Spec.Replicas
			}
			if err := checkDeployment(d); err != nil {
				return 0, fmt.Errorf("deployment %s: %w", d.Name, err)
			}
			probed = append(probed, d)
			if err := checkSecretRefs(d.Spec.Template.Spec, examples); err != nil {
				return 0, fmt.Errorf("deployment %s: %w", d.Name, err)
			}
			for _, v := range d.Spec.Template.Spec.Volumes {
				if v.Name != "tls" || v.Secret == nil {
					continue
				}
				// A key shared would let any holder pass for every process
				// (a leaked gateway key serving as families to the worker).
				if other, ok := tlsOwner[v.Secret.SecretName]; ok {
					return 0, fmt.Errorf("deployments %s and %s mount one TLS secret, %s: each process needs a key of its own", other, d.Name, v.Secret.SecretName)
				}
				tlsOwner[v.Secret.SecretName] = d.Name
			}
		}
	}
	// After the loop: a ConfigMap may come after the deployments reading it.
	for _, d := range probed {
		for _, c := range d.Spec.Template.Spec.Containers {
			if err := checkProbesServed(c, configMaps); err != nil {
				return 0, fmt.Errorf("deployment %s: %w", d.Name, err)
			}
		}
	}
	for _, want := range []string{"families", "interventions", "referrals", "webhooks", "worker", "gateway"} {
		if !deployments[want] {
			return 0, fmt.Errorf("no deployment %q", want)
		}
	}
	if !namespaced {
		return 0, fmt.Errorf("no Namespace: its Pod Security label is what holds pods an operator adds to the restricted profile")
	}
	if !defaultDeny {
		return 0, fmt.Errorf("no default-deny network policy for ingress and egress")
	}
	for _, np := range policies {
		if err := checkNamedPorts(np, podPorts); err != nil {
			return 0, fmt.Errorf("network policy %s: %w", np.Name, err)
		}
	}
	// Every process that checks tokens fetches the issuer's keys over
	// HTTPS: under default deny, one left out of the token-issuer policy
	// refuses every call once its cached keys expire. Another policy
	// opening 443 (the webhooks' own, to subscribers) does not count: an
	// operator narrows that one to the subscribers' addresses.
	i := slices.IndexFunc(policies, func(np *networkingv1.NetworkPolicy) bool { return np.Name == "token-issuer" })
	if i < 0 || !allowsEgressPort(policies[i], 443) {
		return 0, fmt.Errorf("no token-issuer network policy opening HTTPS (port 443) for the token issuer's keys")
	}
	for _, p := range tokenCheckers {
		if !selects(policies[i], podLabels[p]) {
			return 0, fmt.Errorf("network policy token-issuer leaves out the %s pods, which check tokens and fetch the issuer's keys", p)
		}
	}
	for name, n := range keep {
		if f, ok := fewest[name]; ok && n >= f {
			return 0, fmt.Errorf("pod disruption budget %s keeps %d available of as few as %d replicas: no node could ever be drained", name, n, f)
		}
	}
	return len(docs), nil
}

// tokenCheckers are the processes that verify callers' tokens: the services
// and the gateway. The worker only presents its own.
var tokenCheckers = []string{"families", "interventions", "referrals", "webhooks", "gateway"}

// selects reports whether np applies to pods with the given labels, as
// Kubernetes matches a pod selector (an empty one selects every pod).
func selects(np *networkingv1.NetworkPolicy, pod map[string]string) bool {
	sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	return err == nil && sel.Matches(labels.Set(pod))
}

// allowsEgressPort reports whether one of np's egress rules opens port to
// some destination.
func allowsEgressPort(np *networkingv1.NetworkPolicy, port int32) bool {
	for _, rule := range np.Spec.Egress {
		for _, p := range rule.Ports {
			if p.Port != nil && p.Port.Type == intstr.Int && p.Port.IntVal == port {
				return true
			}
		}
	}
	return false
}

// checkNamedPorts refuses a rule that names a port the pods it opens do
// not have: for ingress the pods the policy selects, for egress the pods
// each destination selects (by their name label).
func checkNamedPorts(np *networkingv1.NetworkPolicy, podPorts map[string]map[string]bool) error {
	check := func(pod string, ports []networkingv1.NetworkPolicyPort) error {
		for _, p := range ports {
			if p.Port == nil || p.Port.Type != intstr.String {
				continue
			}
			have, ok := podPorts[pod]
			if !ok {
				return fmt.Errorf("names port %q for pods of no single deployment", p.Port.StrVal)
			}
			if !have[p.Port.StrVal] {
				return fmt.Errorf("names port %q, which the %s pods do not have", p.Port.StrVal, pod)
			}
		}
		return nil
	}
	for _, rule := range np.Spec.Ingress {
		if err := check(np.Spec.PodSelector.MatchLabels["app.kubernetes.io/name"], rule.Ports); err != nil {
			return err
		}
	}
	for _, rule := range np.Spec.Egress {
		for _, to := range rule.To {
			if to.PodSelector == nil {
				continue
			}
			if err := check(to.PodSelector.MatchLabels["app.kubernetes.io/name"], rule.Ports); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkDeployment holds what every Handoff deployment must have.
func checkDeployment(d *appsv1.Deployment) error {
	spec := d.Spec.Template.Spec
	if err := checkPodUser(spec); err != nil {
		return err
	}
	if !spreads(spec, d.Spec.Template.Labels) {
		return fmt.Errorf("needs a topology spread over kubernetes.io/hostname selecting its own pods: one node lost must not take every replica")
	}
	for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
		if err := checkResources(c); err != nil {
			return err
		}
		if err := checkContainerSecurity(c); err != nil {
			return err
		}
		if c.ReadinessProbe == nil || c.LivenessProbe == nil {
			return fmt.Errorf("container %s needs readiness and liveness probes", c.Name)
		}
		// The processes speak mutual TLS on their gRPC ports, which the
		// kubelet's gRPC probe cannot: it would never pass.
		for _, p := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe} {
			if p.GRPC != nil {
				return fmt.Errorf("container %s: a gRPC probe cannot present a client certificate; probe /readyz and /healthz on the metrics port", c.Name)
			}
			if g := p.HTTPGet; g != nil && g.Port.Type == intstr.String && !slices.ContainsFunc(c.Ports, func(cp corev1.ContainerPort) bool { return cp.Name == g.Port.StrVal }) {
				return fmt.Errorf("container %s: a probe names port %q, which the container does not have", c.Name, g.Port.StrVal)
			}
		}
		for _, p := range []struct {
			probe *corev1.Probe
			path  string
		}{{c.ReadinessProbe, "/readyz"}, {c.LivenessProbe, "/healthz"}} {
			if g := p.probe.HTTPGet; g == nil || g.Path != p.path {
				return fmt.Errorf("container %s: probe %s over HTTP GET, the only path of its kind the ops server has", c.Name, p.path)
			}
		}
	}
	return nil
}

func checkResources(c corev1.Container) error {
	r := c.Resources
	if r.Requests.Cpu().IsZero() || r.Requests.Memory().IsZero() || r.Limits.Cpu().IsZero() || r.Limits.Memory().IsZero() {
		return fmt.Errorf("container %s needs CPU and memory requests and limits", c.Name)
	}
	return nil
}

// checkProbesServed requires the probes' port to be the one the process
// serves /readyz and /healthz on: HANDOFF_METRICS_LISTEN, without which
// no such server runs and every probe fails (the pods never get ready,
// then are killed over and over).
func checkProbesServed(c corev1.Container, configMaps map[string]map[string]string) error {
	listen, ok := envValue(c, "HANDOFF_METRICS_LISTEN", configMaps)
	if !ok {
		return fmt.Errorf("container %s: HANDOFF_METRICS_LISTEN is not set, so nothing serves its probes", c.Name)
	}
	_, port, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("container %s: HANDOFF_METRICS_LISTEN %q: %w", c.Name, listen, err)
	}
	for _, p := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe} {
		g := p.HTTPGet
		got := g.Port.String()
		if g.Port.Type == intstr.String {
			i := slices.IndexFunc(c.Ports, func(cp corev1.ContainerPort) bool { return cp.Name == g.Port.StrVal })
			got = fmt.Sprint(c.Ports[i].ContainerPort) // checkDeployment found it
		}
		if got != port {
			return fmt.Errorf("container %s: probe %s on port %s, but HANDOFF_METRICS_LISTEN serves it on %s", c.Name, g.Path, got, port)
		}
	}
	return nil
}

// envValue resolves a container's environment variable as the kubelet
// does: env over envFrom, a later envFrom source over an earlier one. A
// value from a Secret is not known here and counts as unset.
func envValue(c corev1.Container, name string, configMaps map[string]map[string]string) (string, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value, e.ValueFrom == nil
		}
	}
	val, found := "", false
	for _, f := range c.EnvFrom {
		if f.ConfigMapRef == nil || !strings.HasPrefix(name, f.Prefix) {
			continue
		}
		if v, ok := configMaps[f.ConfigMapRef.Name][strings.TrimPrefix(name, f.Prefix)]; ok {
			val, found = v, true
		}
	}
	return val, found
}

// checkContainerSecurity requires what the restricted Pod Security profile
// does, and a read-only root filesystem, which it does not: an overlay
// must not drop them unnoticed.
func checkContainerSecurity(c corev1.Container) error {
	sc := c.SecurityContext
	if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		return fmt.Errorf("container %s must set allowPrivilegeEscalation: false", c.Name)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		return fmt.Errorf("container %s must set readOnlyRootFilesystem: true", c.Name)
	}
	if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
		return fmt.Errorf("container %s must drop ALL capabilities and add none", c.Name)
	}
	// A container's own settings override the pod's non-root user.
	if (sc.RunAsUser != nil && *sc.RunAsUser == 0) || (sc.RunAsNonRoot != nil && !*sc.RunAsNonRoot) {
		return fmt.Errorf("container %s must not run as root: its securityContext overrides the pod's user", c.Name)
	}
	if sc.Privileged != nil && *sc.Privileged {
		return fmt.Errorf("container %s must not be privileged", c.Name)
	}
	return nil
}

// spreads reports whether the pod spec spreads the pods its labels select
// over nodes.
func spreads(spec corev1.PodSpec, labels map[string]string) bool {
	for _, t := range spec.TopologySpreadConstraints {
		if t.TopologyKey != "kubernetes.io/hostname" || t.LabelSelector == nil || len(t.LabelSelector.MatchLabels) == 0 {
			continue
		}
		own := true
		for k, v := range t.LabelSelector.MatchLabels {
			own = own && labels[k] == v
		}
		if own {
			return true
		}
	}
	return false
}

// checkPodUser requires a pod to run as a non-root user given by number:
// the kubelet refuses runAsNonRoot for an image whose user is a name.
func checkPodUser(spec corev1.PodSpec) error {
	sc := spec.SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		return fmt.Errorf("must run as non-root")
	}
	if sc.RunAsUser == nil || *sc.RunAsUser == 0 {
		return fmt.Errorf("must name a non-root runAsUser by number, which runAsNonRoot can check")
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		return fmt.Errorf("must not mount a service account token: no process calls the Kubernetes API")
	}
	return nil
}

// envNames are the variables a Compose service's environment sets, in
// either of its forms (a map, or a list of NAME=value).
func envNames(env any) []string {
	var out []string
	switch e := env.(type) {
	case map[string]any:
		for k := range e {
			out = append(out, k)
		}
	case []any:
		for _, v := range e {
			if s, ok := v.(string); ok {
				out = append(out, strings.SplitN(s, "=", 2)[0])
			}
		}
	}
	return out
}

func validateCompose(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var doc struct {
		Services map[string]struct {
			Image       string   `json:"image"`
			Command     []string `json:"command"`
			Volumes     []any    `json:"volumes"`
			Environment any      `json:"environment"`
		} `json:"services"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return err
	}
	for _, want := range []string{"postgres", "temporal", "temporal-ui", "migrate", "families", "interventions", "referrals", "webhooks", "worker", "gateway"} {
		if _, ok := doc.Services[want]; !ok {
			return fmt.Errorf("no service %q", want)
		}
	}
	// The issuer's signing key and the user tokens are the issuer's alone;
	// a service identity's token is the issuer's and its one process's.
	mounts := map[string][]string{} // volume: services mounting it
	var targets []string            // where the image's processes mount volumes
	for name, svc := range doc.Services {
		for _, v := range svc.Volumes {
			var source, target string
			switch v := v.(type) {
			case string:
				parts := strings.Split(v, ":")
				source = parts[0]
				if len(parts) > 1 {
					target = parts[1]
				}
			case map[string]any:
				source, _ = v["source"].(string)
				target, _ = v["target"].(string)
			}
			mounts[source] = append(mounts[source], name)
			if strings.HasPrefix(target, "/var/lib/handoff") {
				targets = append(targets, target)
			}
		}
	}
	// A named volume takes the ownership of the image's folder where it is
	// mounted: one the image lacks is root's, and the non-root processes
	// cannot write their tokens into it.
	dockerfile, err := os.ReadFile(filepath.Join(filepath.Dir(filepath.Dir(path)), "docker", "Dockerfile"))
	if err != nil {
		return err
	}
	var owned []string
	for _, line := range strings.Split(string(dockerfile), "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == "COPY" && strings.Contains(line, "--chown=65532") {
			owned = append(owned, f[len(f)-1])
		}
	}
	for _, t := range targets {
		if !slices.ContainsFunc(owned, func(o string) bool { return t == o || strings.HasPrefix(t, o+"/") }) {
			return fmt.Errorf("a volume is mounted at %s, which the image does not create owned by its user (deploy/docker/Dockerfile)", t)
		}
	}
	for vol, by := range mounts {
		slices.Sort(by)
		switch {
		case (vol == "issuer" || vol == "issuer-key") && !slices.Equal(by, []string{"issuer"}):
			return fmt.Errorf("volume %s is mounted by %v: only the issuer may hold the signing key and the user tokens", vol, by)
		case strings.HasSuffix(vol, "-token") && (len(by) != 2 || !slices.Contains(by, "issuer")):
			return fmt.Errorf("volume %s is mounted by %v: a service identity's token goes to the issuer and one process", vol, by)
		}
	}
	// Each secret (secretVars, as itself or as its _FILE) only where it
	// is used: the database's URL in the four services and the migration,
	// the payload keys in the processes that talk to Temporal and the
	// gateway (it serves /codec), Temporal's API key in those that talk to
	// it (not the gateway), the webhook keys in the webhooks service, the
	// login role's password in the migration.
	services := []string{"families", "interventions", "referrals", "webhooks"}
	temporal := append(slices.Clone(services), "worker")
	allowed := map[string][]string{
		"HANDOFF_DATABASE_URL":                 append(slices.Clone(services), "migrate"),
		"HANDOFF_PAYLOAD_KEYS":                 append(slices.Clone(temporal), "gateway"),
		"HANDOFF_TEMPORAL_API_KEY":             temporal,
		"HANDOFF_WEBHOOK_SECRET_KEY":           {"webhooks"},
		"HANDOFF_WEBHOOK_PREVIOUS_SECRET_KEYS": {"webhooks"},
		"HANDOFF_APP_LOGIN_PASSWORD":           {"migrate"},
		// pgx's own: the password of a database URL that names none.
		"PGPASSWORD": slices.Clone(services),
	}
	// In order, services and their variables: the same refusal each run
	// for the same file.
	for _, name := range slices.Sorted(maps.Keys(doc.Services)) {
		svc := doc.Services[name]
		names := envNames(svc.Environment)
		slices.Sort(names)
		for _, k := range names {
			k = strings.TrimSuffix(k, "_FILE")
			if !secretVars[k] && k != "PGPASSWORD" {
				continue
			}
			if who := allowed[k]; !slices.Contains(who, name) {
				return fmt.Errorf("service %s is given %s, which it does not use: only %v are", name, k, who)
			}
		}
	}
	if !strings.Contains(string(b), "HANDOFF_PAYLOAD_KEYS") {
		return fmt.Errorf("payload keys must be configured")
	}
	// A default key in the file would be known to everyone with the
	// repository: the keys must be required from the environment.
	for _, key := range []string{"HANDOFF_PAYLOAD_KEYS", "HANDOFF_WEBHOOK_SECRET_KEY"} {
		if !strings.Contains(string(b), "${"+key+":?") {
			return fmt.Errorf("%s must be required from the environment (${%s:?...}), never defaulted", key, key)
		}
	}
	return nil
}
