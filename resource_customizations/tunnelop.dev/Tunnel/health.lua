-- Argo CD health of a tunnelop.dev Tunnel. The reasons and why each maps where it does:
-- docs/gitops.md. Only the base and table libraries are used, so the script also runs from
-- argocd-cm without useOpenLibs.
-- begin shared prelude: hack/health-prelude.lua (make health-scripts copies it)
local hs = {}

local function condition(conditionType)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == conditionType then
      return c
    end
  end
  return nil
end

local function because(c)
  if c.message == nil or c.message == "" then
    return c.reason or ""
  end
  return (c.reason or "") .. ": " .. c.message
end
-- end shared prelude

-- Ready=False reasons. Suspended: stopped on purpose, by the tenant (spec.suspended) or by
-- the provider's TunnelQuota; it resumes when lifted. Progressing: the tunnel gets there
-- without anyone changing anything (a relay starting, a full fleet making room). Degraded,
-- and any reason not listed: someone must change the Tunnel or the provider's objects.
local suspendedReasons = {
  TunnelSuspended = true,
  NamespaceSuspended = true,
  TrafficQuotaExceeded = true,
}
local progressingReasons = {
  RelayNotReady = true,
  NoRelayReady = true,
  CapacityExhausted = true,
}
local degradedReasons = {
  InvalidSpec = true,
  NoRelayMatches = true,
  ProtocolNotAllowed = true,
  PortNotAllowed = true,
  CustomDomainNotAllowed = true,
  PortTaken = true,
  SubdomainTaken = true,
  CustomDomainTaken = true,
  QuotaExceeded = true,
}

if obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "The Tunnel is being deleted: its port or subdomain is released"
  return hs
end

local ready = condition("Ready")
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to schedule the Tunnel"
  return hs
end

if obj.metadata.generation ~= nil and obj.status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. obj.metadata.generation
  return hs
end

if ready.status == "True" then
  local client = condition("ClientConnected")
  local inCluster = obj.spec ~= nil and obj.spec.client ~= nil and obj.spec.client.type == "InCluster"
  -- An External client runs outside the cluster, and outside Git: the tunnel is healthy
  -- once its endpoint serves. An InCluster one is the operator's to run.
  if inCluster and (client == nil or client.status ~= "True") then
    if client ~= nil and client.reason == "ClientRefused" then
      hs.status = "Degraded"
      hs.message = because(client)
    else
      hs.status = "Progressing"
      if client == nil then
        hs.message = "Waiting for the in-cluster frpc to connect"
      else
        hs.message = because(client)
      end
    end
    return hs
  end
  hs.status = "Healthy"
  hs.message = ready.message
  return hs
end

if ready.status == "False" and degradedReasons[ready.reason] then
  hs.status = "Degraded"
elseif suspendedReasons[ready.reason] or (obj.spec ~= nil and obj.spec.suspended == true) then
  hs.status = "Suspended"
elseif ready.status ~= "False" or progressingReasons[ready.reason] then
  hs.status = "Progressing"
else
  hs.status = "Degraded"
end
hs.message = because(ready)
return hs
