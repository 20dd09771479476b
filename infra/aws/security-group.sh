#!/usr/bin/env bash
# Create the cluster's security group: SSH from the admin CIDR only, all traffic between cluster
# members, and nothing else. Ray's ports (6379 GCS, 8265 dashboard, 10001 client, ...) are never
# opened to the internet; reach the dashboard with `ray dashboard infra/aws/cluster.yaml`.
#
#   VPC_ID=vpc-... ADMIN_CIDR=203.0.113.7/32 REGION=us-east-1 ./infra/aws/security-group.sh
#
# We create it ourselves (and name it in cluster.yaml) because the group the Ray launcher creates
# on its own opens SSH to 0.0.0.0/0.
set -euo pipefail

: "${VPC_ID:?set VPC_ID}"
: "${ADMIN_CIDR:?set ADMIN_CIDR (your workstation, e.g. 203.0.113.7/32)}"
: "${REGION:?set REGION}"
if [ "$ADMIN_CIDR" = "0.0.0.0/0" ]; then
  echo "ADMIN_CIDR must be your own address range, not 0.0.0.0/0" >&2
  exit 2
fi

SG_ID="$(aws ec2 create-security-group --region "$REGION" --vpc-id "$VPC_ID" \
  --group-name deepsad-ray --description "deepsad Ray cluster: SSH from admin, intra-cluster only" \
  --query GroupId --output text)"
aws ec2 authorize-security-group-ingress --region "$REGION" --group-id "$SG_ID" \
  --ip-permissions "IpProtocol=tcp,FromPort=22,ToPort=22,IpRanges=[{CidrIp=${ADMIN_CIDR},Description=admin-ssh}]"
# Ray nodes talk to each other on many ports (GCS, raylets, object manager, workers, NCCL)
aws ec2 authorize-security-group-ingress --region "$REGION" --group-id "$SG_ID" \
  --ip-permissions "IpProtocol=-1,UserIdGroupPairs=[{GroupId=${SG_ID},Description=intra-cluster}]"
echo "security group: $SG_ID  (put it in infra/aws/cluster.yaml: SecurityGroupIds)"
